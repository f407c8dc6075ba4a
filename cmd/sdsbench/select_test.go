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
		{"full run", "", false, figures},
		{"quick leaves out the slow figures", "", true, []string{"exec_to_first_sds", "sds_request_response", "rotation_fanout", "rss_kb"}},
		{"only names them", " outage_recovery,restart_reconnect ", true, []string{"outage_recovery", "restart_reconnect"}},
		{"only one", "rss_kb", false, []string{"rss_kb"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			only, err := parseOnly(tt.only)
			if err != nil {
				t.Fatal(err)
			}
			p := params{quick: tt.quick, only: only}
			var got []string
			for _, f := range figures {
				if p.selected(f) {
					got = append(got, f)
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
	code := run(context.Background(), []string{"-agent", "bin/sdsagent", "-only", "rss_kb,outage"}, &stdout, &stderr)
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
