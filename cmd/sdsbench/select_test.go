package main

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestSelectedFigures(t *testing.T) {
	tests := []struct {
		name  string
		only  string
		quick bool
		want  []string
	}{
		{"full run", "", false, figureKeys},
		{"quick leaves out the slow figures", "", true, []string{"exec", "request", "fanout", "rss"}},
		{"only names them", " outage_recovery,restart_reconnect ", true, []string{"outage_recovery", "restart_reconnect"}},
		{"only one", "rss", false, []string{"rss"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			only, err := parseOnly(tt.only, tt.quick)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, k := range figureKeys {
				if only[k] {
					got = append(got, k)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("runs %v, want %v", got, tt.want)
			}
		})
	}
}

func TestUnknownFigureIsRefused(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"-agent", "bin/sdsagent", "-only", "rss,outage"}, &stdout, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), `unknown figure "outage"`) || !strings.Contains(stderr.String(), "outage_recovery") {
		t.Fatalf("exit %d, stderr %q; want exit 2 naming the unknown figure and the valid ones", code, stderr.String())
	}
}

func TestOutageScheduleCoversTheWindowAndExpiry(t *testing.T) {
	// The CA comes back inside the renewal window (which opens 1 s after
	// issuance, outageGraceRatio of the TTL before expiry), in the last
	// tenth of the life and after expiry.
	ratio, err := strconv.ParseFloat(outageGraceRatio, 64)
	if err != nil {
		t.Fatal(err)
	}
	window := time.Duration(ratio * float64(outageTTL))
	var inWindow, lastTenth, expired int
	for _, left := range outageLefts {
		switch {
		case left > window:
			t.Fatalf("the CA comes back with %s left, before the renewal window opens", left)
		case left <= 0:
			expired++
		case left <= outageTTL/10:
			lastTenth++
		default:
			inWindow++
		}
	}
	if len(outageLefts) != 10 || inWindow == 0 || lastTenth == 0 || expired == 0 {
		t.Fatalf("%d outages: %d in the window, %d in the last tenth, %d expired", len(outageLefts), inWindow, lastTenth, expired)
	}
}
