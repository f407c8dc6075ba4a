package main

import (
	"fmt"
	"slices"
	"strings"
)

// figures names every figure, in the order they run.
var figures = []string{"exec_to_first_sds", "sds_request_response", "rotation_fanout", "rss_kb", "outage_recovery", "restart_reconnect"}

// slowFigures take tens of seconds whatever the sizes, so -quick leaves
// them out unless -only names them.
var slowFigures = []string{"outage_recovery", "restart_reconnect"}

// parseOnly parses -only: figure names separated by commas.
func parseOnly(s string) (map[string]bool, error) {
	only := map[string]bool{}
	for name := range strings.SplitSeq(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !slices.Contains(figures, name) {
			return nil, fmt.Errorf("-only: unknown figure %q; the figures are %s", name, strings.Join(figures, ", "))
		}
		only[name] = true
	}
	return only, nil
}

// selected reports whether the figure name runs.
func (p params) selected(name string) bool {
	if len(p.only) > 0 {
		return p.only[name]
	}
	return !p.quick || !slices.Contains(slowFigures, name)
}
