package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFailureIsReported(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no agent", nil, 2, "-agent PATH is required"},
		{"missing binary", []string{"-agent", filepath.Join(t.TempDir(), "nope")}, 1, "no such file"},
		// An agent that exits at once: the CA never says it listens.
		{"agent exits", []string{"-agent", "/bin/true", "-quick"}, 1, "development CA listening"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.wantCode || !strings.Contains(stderr.String(), tt.wantErr) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr.String(), tt.wantCode, tt.wantErr)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		name                 string
		in                   []time.Duration
		median, p90, p99, mx time.Duration
	}{
		{"one", ms(7), 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond},
		{"even count", ms(4, 1, 3, 2), 2500 * time.Microsecond, 4 * time.Millisecond, 4 * time.Millisecond, 4 * time.Millisecond},
		{"ten", ms(10, 9, 8, 7, 6, 5, 4, 3, 2, 1), 5500 * time.Microsecond, 9 * time.Millisecond, 10 * time.Millisecond, 10 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := summarize(tt.in)
			if s.median != tt.median || s.p90 != tt.p90 || s.p99 != tt.p99 || s.max != tt.mx {
				t.Fatalf("got median %s p90 %s p99 %s max %s", s.median, s.p90, s.p99, s.max)
			}
		})
	}
}

func TestSetPublished(t *testing.T) {
	first := time.Date(2026, 11, 26, 19, 0, 0, 500_000_000, time.UTC)
	dump := func(version string, updated time.Time) string {
		return `{"dynamicActiveSecrets":[{"name":"ROOTCA","versionInfo":"sds-x-1","lastUpdated":"2026-11-26T18:00:00Z","secret":{}},` +
			`{"name":"default","versionInfo":"` + version + `","lastUpdated":"` + updated.Format(time.RFC3339Nano) + `","secret":{}}]}`
	}
	tests := []struct {
		name          string
		status        int
		body          string
		notBefore     time.Time
		wantPublished time.Time
		wantFallback  bool
		wantNote      bool
		wantErr       string
	}{
		{name: "endpoint not there", status: 404, body: "404 page not found", wantPublished: first, wantFallback: true},
		{name: "publish time", status: 200, body: dump("sds-x-3", first.Add(-7*time.Millisecond)), wantPublished: first.Add(-7 * time.Millisecond)},
		{name: "other version", status: 200, body: dump("v9", first.Add(-time.Millisecond)), wantPublished: first.Add(-time.Millisecond), wantNote: true},
		{name: "after first receipt", status: 200, body: dump("sds-x-3", first.Add(time.Millisecond)), wantErr: "not the publish time"},
		{name: "previous rotation", status: 200, body: dump("sds-x-2", first.Add(-2*time.Second)), notBefore: first.Add(-time.Second), wantErr: "not after the previous rotation"},
		{name: "no default", status: 200, body: `{"dynamicActiveSecrets":[]}`, wantErr: `no "default"`},
		{name: "server error", status: 500, body: "boom", wantErr: "500"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/debug/secrets" {
					http.NotFound(w, r)
					return
				}
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			a := &agentProc{proc: &proc{name: "agent", ctx: context.Background(), exited: make(chan struct{})}, httpAddr: strings.TrimPrefix(srv.URL, "http://")}
			r := &rotation{version: "sds-x-3", first: first}
			res := &fanoutResult{}
			err := (&bencher{}).setPublished(a, r, tt.notBefore, res)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !r.published.Equal(tt.wantPublished) || (res.fallback != "") != tt.wantFallback || (r.debugNote != "") != tt.wantNote {
				t.Fatalf("published %s fallback %q note %q; want %s fallback %v note %v",
					r.published, res.fallback, r.debugNote, tt.wantPublished, tt.wantFallback, tt.wantNote)
			}
		})
	}
}
