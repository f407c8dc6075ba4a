package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseInittrace(t *testing.T) {
	out := []byte(`init internal/bytealg @0.008 ms, 0 ms clock, 0 bytes, 0 allocs
init runtime @0.13 ms, 0.10 ms clock, 0 bytes, 0 allocs
hello
init google.golang.org/grpc @15 ms, 0.17 ms clock, 28120 bytes, 476 allocs
init github.com/envoyproxy/go-control-plane/envoy/config/core/v3 @11 ms, 1.5 ms clock, 163544 bytes, 640 allocs
`)
	d, n, err := parseInittrace(out)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 || d != 1770*time.Microsecond {
		t.Fatalf("sum %s over %d lines, want 1.77ms over 4", d, n)
	}
	if _, _, err := parseInittrace([]byte("init x @1 ms, fast ms clock, 0 bytes, 0 allocs\n")); err == nil {
		t.Fatal("no error for a malformed clock")
	}
}

func TestInitLines(t *testing.T) {
	bins := []initBinary{{name: "agent"}, {name: "floor"}, {name: "hello"}}
	tests := []struct {
		name       string
		agentInit  time.Duration
		bins       []initBinary
		want, size string
	}{
		{"within target", 11 * time.Millisecond, bins, "agent/floor: init=1.10x wall=2.00x cpu=1.50x  agent/hello: init=11.00x wall=4.00x cpu=6.00x  [target init<=1.15x floor: met]", "binary_size  agent=20.0MB floor=10.0MB hello=2.0MB  agent/floor=2.00x"},
		{"over target", 12 * time.Millisecond, bins, "agent/floor: init=1.20x", ""},
		{"no floor", 12 * time.Millisecond, []initBinary{bins[0], bins[2]}, "agent/hello: init=12.00x wall=4.00x cpu=6.00x  [no floor server in this run: target not judged]", "binary_size  agent=20.0MB hello=2.0MB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := map[string]initSample{
				"agent": {init: tt.agentInit, wall: 8 * time.Millisecond, cpu: 6 * time.Millisecond, size: 20 << 20},
				"hello": {init: time.Millisecond, wall: 2 * time.Millisecond, cpu: time.Millisecond, size: 2 << 20},
			}
			for _, b := range tt.bins {
				if b.name == "floor" {
					s["floor"] = initSample{init: 10 * time.Millisecond, wall: 4 * time.Millisecond, cpu: 4 * time.Millisecond, size: 10 << 20}
				}
			}
			lines := initLines(30, tt.bins, s)
			if len(lines) != 2 || !strings.HasPrefix(lines[0], "init_time  runs=30 median  agent: init=") || !strings.Contains(lines[0], tt.want) {
				t.Fatalf("lines %q, want %q in the first", lines, tt.want)
			}
			if tt.name == "over target" && !strings.Contains(lines[0], "MISSED") {
				t.Errorf("%q does not say MISSED", lines[0])
			}
			if tt.size != "" && lines[1] != tt.size {
				t.Errorf("size line %q, want %q", lines[1], tt.size)
			}
		})
	}
}

func TestColdLine(t *testing.T) {
	tests := []struct {
		name                string
		agent, floor, csr   time.Duration
		wantBound, wantVerd string
	}{
		{"within", 20 * time.Millisecond, 10 * time.Millisecond, 7 * time.Millisecond, "1.3x floor + csr=20.00ms", "met"},
		{"over", 21 * time.Millisecond, 10 * time.Millisecond, 7 * time.Millisecond, "1.3x floor + csr=20.00ms", "MISSED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := coldLine(20, tt.agent, tt.floor, tt.csr)
			if !strings.HasPrefix(line, "cold_start  runs=20 median  agent=") || !strings.Contains(line, tt.wantBound) ||
				!strings.HasSuffix(line, tt.wantVerd+"]") || !strings.Contains(line, "floor=10.00ms csr_round_trip=7.00ms") {
				t.Fatalf("%q: want %q and %s", line, tt.wantBound, tt.wantVerd)
			}
		})
	}
}
