package main

// Unit tests of the tool's pieces. The tool itself, against a real agent,
// runs in `make bench` only: a run starts several agents and takes tens of
// seconds, which is a benchmark, not a unit test.

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// waitLimit only bounds a hang; nothing here is timed.
const waitLimit = 20 * time.Second

func TestBadFlagsExit2(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"help", []string{"-h"}, 0, "-agent"},
		{"unknown flag", []string{"-agent", "x", "-nope"}, 2, "flag provided but not defined: -nope"},
		{"argument", []string{"-agent", "x", "extra"}, 2, "no arguments are taken"},
		{"zero runs", []string{"-agent", "x", "-runs", "0"}, 2, "-runs and -rotations must be at least 1"},
		{"zero rotations", []string{"-agent", "x", "-quick", "-rotations", "0"}, 2, "-runs and -rotations must be at least 1"},
		{"not a number", []string{"-agent", "x", "-runs", "many"}, 2, "invalid value"},
		{"directory as agent", []string{"-agent", t.TempDir()}, 1, "not an executable file"},
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

func TestQuickParamsAreSmallerThanFull(t *testing.T) {
	q, f := defaultParams(true), defaultParams(false)
	if q.execRuns >= f.execRuns || q.latencySamples >= f.latencySamples || q.fanoutStreams >= f.fanoutStreams ||
		q.fanoutRotations >= f.fanoutRotations || q.rssSettle >= f.rssSettle {
		t.Fatalf("quick %+v is not smaller than full %+v", q, f)
	}
	for _, p := range []params{q, f} {
		if p.execRuns < 1 || p.execRunsRSA < 1 || p.latencyConns < 1 || p.latencyStreams < p.latencyConns ||
			p.fanoutStreams < p.fanoutConns || p.rssStreams < p.rssConns || p.fanoutTTL <= 0 {
			t.Fatalf("params %+v: a size is zero or more connections than streams", p)
		}
	}
}

func TestDurationFormats(t *testing.T) {
	tests := []struct {
		d      time.Duration
		ms, us string
	}{
		{0, "0.00ms", "0µs"},
		{1500 * time.Microsecond, "1.50ms", "1500µs"},
		{1234567 * time.Nanosecond, "1.23ms", "1234µs"},
		{2 * time.Second, "2000.00ms", "2000000µs"},
	}
	for _, tt := range tests {
		if got := ms(tt.d); got != tt.ms {
			t.Errorf("ms(%s) = %q, want %q", tt.d, got, tt.ms)
		}
		if got := us(tt.d); got != tt.us {
			t.Errorf("us(%s) = %q, want %q", tt.d, got, tt.us)
		}
	}
	if verdict(true) != "met" || verdict(false) != "MISSED" {
		t.Errorf("verdict(true), verdict(false) = %q, %q", verdict(true), verdict(false))
	}
}

func TestExecLine(t *testing.T) {
	d := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		name, key string
		times     []time.Duration
		want      string
	}{
		{"default key met", defaultKeyType, d(90, 10, 30),
			"exec_to_first_sds  key=ecdsa-p256 runs=3 median=30.00ms p90=90.00ms min=10.00ms max=90.00ms first_run=90.00ms  [target median<=50.00ms: met]"},
		{"default key missed", defaultKeyType, d(60),
			"exec_to_first_sds  key=ecdsa-p256 runs=1 median=60.00ms p90=60.00ms min=60.00ms max=60.00ms first_run=60.00ms  [target median<=50.00ms: MISSED]"},
		{"comparison key has no target", comparisonKeyType, d(200, 100),
			"exec_to_first_sds  key=rsa-2048 runs=2 median=150.00ms p90=200.00ms min=100.00ms max=200.00ms first_run=200.00ms  [comparison only]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := execLine(tt.key, tt.times); got != tt.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestFanoutLines(t *testing.T) {
	pub := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	rot := func(first, last time.Duration, count int, note string) *rotation {
		return &rotation{published: pub, first: pub.Add(first), last: pub.Add(last), count: count, debugNote: note}
	}
	p := params{fanoutStreams: 3, fanoutConns: 2, fanoutTTL: 4 * time.Second}
	tests := []struct {
		name string
		res  *fanoutResult
		want []string
	}{
		{
			name: "every stream in time",
			res: &fanoutResult{rotations: []*rotation{rot(time.Millisecond, 5*time.Millisecond, 3, ""), rot(2*time.Millisecond, 7*time.Millisecond, 3, "")},
				setup: 1234 * time.Microsecond, skipped: 1, duplicates: 2},
			want: []string{"rotation_fanout streams=3 conns=2 rotations=2 median_last_stream=6.00ms max_last_stream=7.00ms median_first_stream=1.50ms " +
				"per_rotation_last=[5.00ms 7.00ms] got=[3 3] setup=1ms skipped_during_setup=1 duplicate_responses=2 ttl=4s " +
				"(measured from the agent's publish time: lastUpdated of default in /debug/secrets)  [target max<=100.00ms: met]"},
		},
		{
			name: "missed, from the first receipt, with a note",
			res: &fanoutResult{rotations: []*rotation{rot(0, 150*time.Millisecond, 2, "version differs")},
				fallback: "no /debug/secrets"},
			want: []string{"rotation_fanout streams=3 conns=2 rotations=1 median_last_stream=150.00ms max_last_stream=150.00ms median_first_stream=0.00ms " +
				"per_rotation_last=[150.00ms] got=[2] setup=0s skipped_during_setup=0 duplicate_responses=0 ttl=4s " +
				"(measured from the FIRST STREAM'S RECEIPT, not the publish time: no /debug/secrets)  [target max<=100.00ms: MISSED]",
				"# rotation_fanout note: version differs"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := fanoutLines(p, tt.res)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestTailKeepsTheLastLines(t *testing.T) {
	tl := newTail(2)
	if got := tl.String(); got != "  (no output)" {
		t.Fatalf("empty tail = %q", got)
	}
	for _, l := range []string{"one", "two", "three"} {
		tl.add(l)
	}
	if got := tl.String(); got != "  two\n  three" {
		t.Fatalf("tail = %q, want the last two lines indented", got)
	}
}

// writeScript writes an executable shell script into dir.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestProcReportsItsEnd(t *testing.T) {
	dir := t.TempDir()
	t.Run("exits before it is stopped", func(t *testing.T) {
		bin := writeScript(t, dir, "early", "echo first line >&2\necho last line >&2\nexit 3\n")
		// The pipe is read apart from the exit: wait for both.
		last := make(chan struct{})
		p, _, err := startProc(context.Background(), "early", bin, func(line []byte) {
			if string(line) == "last line" {
				close(last)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []<-chan struct{}{p.exited, last} {
			select {
			case <-c:
			case <-time.After(waitLimit):
				t.Fatalf("the script did not print its lines and exit; logs:\n%s", p.logs)
			}
		}
		err = p.stop(stopLimit)
		if err == nil || !strings.Contains(err.Error(), "exited before it was stopped") ||
			!strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "  first line\n  last line") {
			t.Fatalf("stop = %v, want the exit status and the last logs", err)
		}
		p.kill() // idempotent once reaped
	})
	t.Run("stops on SIGTERM", func(t *testing.T) {
		ready := make(chan struct{})
		// The trap is set before "ready" is printed, so SIGTERM after it
		// ends the script with exit 0.
		bin := writeScript(t, dir, "clean", "trap 'exit 0' TERM\necho ready\nwhile :; do sleep 1; done\n")
		p, _, err := startProc(context.Background(), "clean", bin, func(line []byte) {
			if string(line) == "ready" {
				close(ready)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		defer p.kill()
		select {
		case <-ready:
		case <-time.After(waitLimit):
			t.Fatalf("no ready line; logs:\n%s", p.logs)
		}
		m, err := p.status()
		if err != nil || m.rss <= 0 || m.hwm < m.rss {
			t.Fatalf("status = %+v, %v; want VmRSS > 0 and VmHWM >= VmRSS", m, err)
		}
		if err := p.stop(stopLimit); err != nil {
			t.Fatal(err)
		}
	})
}

// TestInterruptedRunCleansUp interrupts a run (as Ctrl-C does) once an
// agent is running, with a fake agent that only says it is a CA and then
// never serves: the run fails, and kills every process and removes its
// temp dir.
func TestInterruptedRunCleansUp(t *testing.T) {
	binDir := t.TempDir()
	agent := writeScript(t, binDir, "fake-agent", `case "$1" in
version) echo fake; exit 0 ;;
ca) echo '{"msg":"development CA listening","addr":"127.0.0.1:1"}' >&2 ;;
esac
while :; do sleep 1; done
`)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // so that the tool's temp dir can be checked

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"-agent", agent, "-quick"}, &stdout, &stderr) }()

	// Interrupt once both the CA (a copy of the binary in the tool's
	// temp dir) and an agent run.
	deadline := time.After(waitLimit)
	for len(scriptsRunning(tmp)) == 0 || len(scriptsRunning(agent)) == 0 {
		select {
		case code := <-done:
			t.Fatalf("run ended with %d before it was interrupted; stderr:\n%s", code, stderr.String())
		case <-deadline:
			t.Fatalf("the CA and an agent did not both start; stderr:\n%s", stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	cancel()
	var code int
	select {
	case code = <-done:
	case <-time.After(waitLimit):
		t.Fatal("run did not return after it was interrupted")
	}
	if code != 1 || !strings.Contains(stderr.String(), "sdsbench: FAILED: interrupted: exec_to_first_sds ecdsa-p256") {
		t.Errorf("exit %d, stderr %q; want exit 1 and an interrupted failure", code, stderr.String())
	}
	if !strings.HasPrefix(stdout.String(), "# sdsbench agent="+agent+" (fake)") {
		t.Errorf("stdout %q does not start with the header line", stdout.String())
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("temp files left behind: %v", left)
	}
	if pids := append(scriptsRunning(agent), scriptsRunning(tmp)...); len(pids) > 0 {
		t.Errorf("processes left running: %v", pids)
	}
}

// scriptsRunning returns the pids of processes whose command line has an
// argument starting with prefix (a script's path follows its interpreter).
func scriptsRunning(prefix string) []string {
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, arg := range bytes.Split(cmdline, []byte{0}) {
			if bytes.HasPrefix(arg, []byte(prefix)) {
				pids = append(pids, e.Name())
				break
			}
		}
	}
	return pids
}

// TestGrownStacks: pprof's goroutine text is grouped by stack, and only
// the stacks that hold more goroutines than before are named, not the
// debug server's own for the request that reads the profile.
func TestGrownStacks(t *testing.T) {
	const before = `goroutine profile: total 3
2 @ 0x1 0x2
#	0x1	main.wait+0x10	/src/main.go:10
#	0x2	main.main+0x20	/src/main.go:20

1 @ 0x3
#	0x3	net/http.(*conn).serve+0x5	/go/net/http/server.go:1

`
	const after = `goroutine profile: total 5
2 @ 0x1 0x2
#	0x1	main.wait+0x10	/src/main.go:10
#	0x2	main.main+0x20	/src/main.go:20

3 @ 0x3
#	0x3	net/http.(*conn).serve+0x5	/go/net/http/server.go:1

4 @ 0x4 0x5
#	0x4	google.golang.org/grpc/internal/transport.(*http2Server).keepalive+0x1	/k.go:1
#	0x5	google.golang.org/grpc/internal/transport.NewServerTransport.gowrap2+0x1	/k.go:2
`
	got := grownStacks(parseGoroutineStacks(before), parseGoroutineStacks(after))
	want := []string{"+4 google.golang.org/grpc/internal/transport.(*http2Server).keepalive < google.golang.org/grpc/internal/transport.NewServerTransport.gowrap2"}
	if !slices.Equal(got, want) {
		t.Fatalf("grownStacks = %q, want %q", got, want)
	}
}
