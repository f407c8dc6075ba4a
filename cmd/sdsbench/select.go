package main

import (
	"fmt"
	"slices"
	"strings"
)

// Keys of -only, in the order the figures run. quickKeys are what -quick
// runs when -only is not given: the others take tens of seconds or
// minutes whatever the sizes. peersKey is known too, in neither set.
var (
	figureKeys = []string{"exec", "request", "fanout", "rss", "conns", "connmem", "outage_recovery", "restart_reconnect", "logflood", "limits", "churn", "init", "coldstart"}
	quickKeys  = []string{"exec", "request", "fanout", "rss"}
)

// parseOnly returns the set of figure keys that list (comma-separated)
// names; an empty list means every figure, or quickKeys with quick.
func parseOnly(list string, quick bool) (map[string]bool, error) {
	set := map[string]bool{}
	if strings.TrimSpace(list) == "" {
		keys := figureKeys
		if quick {
			keys = quickKeys
		}
		for _, k := range keys {
			set[k] = true
		}
		return set, nil
	}
	for k := range strings.SplitSeq(list, ",") {
		k = strings.TrimSpace(k)
		if k == "" {
			continue
		}
		if !slices.Contains(figureKeys, k) && k != peersKey {
			return nil, fmt.Errorf("-only: unknown figure %q; known: %s", k, strings.Join(append(slices.Clone(figureKeys), peersKey), ","))
		}
		set[k] = true
	}
	return set, nil
}
