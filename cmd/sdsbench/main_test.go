package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQuickRunEndToEnd builds the agent, runs the tool in -quick mode
// against it and checks that every figure is printed, that it exits 0,
// and that it leaves no process and no temp dir behind.
func TestQuickRunEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds sdsagent and runs real processes")
	}
	bin := filepath.Join(t.TempDir(), "sdsagent")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/sdsagent/sdsagent/cmd/sdsagent").CombinedOutput()
	if err != nil {
		t.Fatalf("build sdsagent: %v\n%s", err, out)
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // so that the tool's temp dir can be checked

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if code := run(ctx, []string{"-agent", bin, "-quick"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	t.Logf("output:\n%s", stdout.String())

	lines := strings.Split(stdout.String(), "\n")
	for _, want := range []string{
		"exec_to_first_sds  key=ecdsa-p256 runs=3 median=",
		"exec_to_first_sds  key=rsa-2048 runs=1 median=",
		"sds_request_response streams_open=100 conns=10 samples=200 p50=",
		"rotation_fanout streams=200 conns=10 rotations=1 median_last_stream=",
		"rss_kb release_startup_memory=true streams=1 conns=1 value=",
		"rss_kb release_startup_memory=false streams=1 conns=1 value=",
		"rss_kb release_startup_memory=true streams=200 conns=10 value=",
	} {
		found := false
		for _, l := range lines {
			found = found || strings.HasPrefix(l, want)
		}
		if !found {
			t.Errorf("no line starting with %q", want)
		}
	}
	if !strings.Contains(stdout.String(), "got=[200]") {
		t.Errorf("rotation_fanout does not say every stream got the rotation")
	}

	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("temp files left behind: %v", left)
	}
	if pids := processesRunning(bin); len(pids) > 0 {
		t.Errorf("processes of %s left running: %v", bin, pids)
	}

	// Interrupted midway (as by Ctrl-C), it fails and still cleans up.
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	stdout.Reset()
	stderr.Reset()
	if code := run(ctx, []string{"-agent", bin}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "FAILED") {
		t.Errorf("interrupted run: exit %d, stderr %q; want exit 1 and a failure message", code, stderr.String())
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("interrupted run left temp files behind: %v", left)
	}
	if pids := processesRunning(bin); len(pids) > 0 {
		t.Errorf("interrupted run left processes of %s running: %v", bin, pids)
	}
}

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

// processesRunning returns the pids whose command line starts with bin.
func processesRunning(bin string) []string {
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.HasPrefix(cmdline, []byte(bin+"\x00")) {
			pids = append(pids, e.Name())
		}
	}
	return pids
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
