package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

const (
	// churnParallel is how many connections are being set up at once.
	churnParallel = 64
	// churnSample is how often usage is printed while the agent settles.
	churnSample = 10 * time.Second
)

// Targets of issue 9 for churn: goroutines and fds back to their
// baseline, resident memory within 2x of it, 30 s after the churn.
const targetChurnRSSFactor = 2

// usage is one sample of what the agent holds.
type usage struct {
	goroutines, fds int
	mem             memory
	// heapInUse is the Go heap in use (kB): what RssAnon would be if the
	// runtime returned every free page at once.
	heapInUse int64
}

func (u usage) String() string {
	return fmt.Sprintf("goroutines=%d fds=%d rss_anon_kb=%d rss_file_kb=%d heap_inuse_kb=%d",
		u.goroutines, u.fds, u.mem.anon, u.mem.file, u.heapInUse)
}

func (a *agentProc) usage(ctx context.Context) (usage, error) {
	// Files and memory first: the read of /metrics below is a connection
	// of its own, whose socket the agent may not have closed yet when the
	// answer arrives.
	fds, err := a.openFDs()
	if err != nil {
		return usage{}, err
	}
	mem, err := a.status()
	if err != nil {
		return usage{}, err
	}
	m, err := a.metrics(ctx, "go_goroutines", "go_memstats_heap_inuse_bytes")
	if err != nil {
		return usage{}, err
	}
	return usage{goroutines: int(m["go_goroutines"]), fds: fds, mem: mem, heapInUse: int64(m["go_memstats_heap_inuse_bytes"]) / 1024}, nil
}

// churn runs the churn figure twice: with the agent's default limits
// (most of the churnConns connections are refused by
// --sds-max-connections) and with limits raised so that every connection
// and stream is served, through the environment, which an agent that
// lacks a setting ignores.
func (b *bencher) churn(ctx context.Context) error {
	s := b.sizes()
	raised := strconv.Itoa(s.churnConns + 1024)
	for _, run := range []struct {
		label string
		env   []string
	}{
		{"default", nil},
		{"raised", []string{"SDSAGENT_SDS_MAX_CONNECTIONS=" + raised, "SDSAGENT_SDS_MAX_STREAMS=" + raised}},
	} {
		if err := b.churnOnce(ctx, run.label, run.env); err != nil {
			return err
		}
	}
	return nil
}

// churnOnce opens churnConns connections to one agent started with env,
// each with a stream that receives "default", then drops them all;
// churnRounds times. It prints the agent's goroutines, fds and memory at
// baseline, at each round's peak and right after it, and churnSettle
// after the last, each line labelled limits=label.
func (b *bencher) churnOnce(ctx context.Context, label string, env []string) error {
	s := b.sizes()
	// The agent inherits this process's limit; both need one fd per
	// connection and some.
	if err := raiseFDLimit(s.churnConns + 1024); err != nil {
		return err
	}
	a, err := b.startServingEnv(ctx, env)
	if err != nil {
		return err
	}
	tag := "churn limits=" + label
	err = func() error {
		// As rss_kb does: after the agent released its startup pages (2 s
		// after its first certificate). Then one sample is taken and
		// dropped: reading /metrics runs code (the HTTP server, the
		// exposition) whose pages stay resident, and every later sample
		// follows reads like it, so the baseline does too.
		if err := sleep(a.ctx, 3*time.Second); err != nil {
			return err
		}
		if _, err := a.usage(a.ctx); err != nil {
			return err
		}
		if err := sleep(a.ctx, time.Second); err != nil {
			return err
		}
		base, err := a.usage(a.ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(b.out, "%s conns=%d rounds=%d baseline %s\n", tag, s.churnConns, s.churnRounds, base)
		if err := b.printRuntimeMem(a, tag+" baseline_runtime"); err != nil {
			return err
		}
		baseStacks, err := a.goroutineStacks(a.ctx)
		if err != nil {
			return err
		}
		for round := 1; round <= s.churnRounds; round++ {
			start := time.Now()
			conns, streams, outcomes, err := openChurn(a.ctx, a.socket, s.churnConns)
			if err != nil {
				return fmt.Errorf("round %d: %w", round, err)
			}
			opened := time.Since(start)
			peak, err := a.usage(a.ctx)
			for _, st := range streams {
				st.Close()
			}
			closeAll(conns)
			if err != nil {
				return err
			}
			after, err := a.usage(a.ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(b.out, "%s round=%d open_took=%s streams=%s peak %s\n", tag, round, ms(opened), outcomes, peak)
			fmt.Fprintf(b.out, "%s round=%d right_after %s\n", tag, round, after)
		}
		// Sample every churnSample until churnSettle, to show the trend.
		var end usage
		for waited := time.Duration(0); waited < s.churnSettle; {
			step := min(churnSample, s.churnSettle-waited)
			if err := sleep(a.ctx, step); err != nil {
				return err
			}
			waited += step
			if end, err = a.usage(a.ctx); err != nil {
				return err
			}
			if waited < s.churnSettle {
				fmt.Fprintf(b.out, "%s after=%s %s\n", tag, waited, end)
			}
		}
		rss := func(u usage) int64 { return u.mem.anon + u.mem.file }
		ratio := float64(rss(end)) / float64(rss(base))
		// Goroutines are compared stack by stack: the count alone moves by
		// one or two with the debug server's goroutines for the request
		// that reads it.
		endStacks, err := a.goroutineStacks(a.ctx)
		if err != nil {
			return err
		}
		left := grownStacks(baseStacks, endStacks)
		ok := len(left) == 0 && end.fds <= base.fds && ratio <= targetChurnRSSFactor
		fmt.Fprintf(b.out, "%s settled_after=%s %s rss_ratio=%.2f  [target goroutines and fds at baseline, rss <=%dx baseline: %s]\n",
			tag, s.churnSettle, end, ratio, targetChurnRSSFactor, verdict(ok))
		for _, g := range left {
			fmt.Fprintf(b.out, "%s goroutines_over_baseline %s\n", tag, g)
		}
		if err := b.printRuntimeMem(a, tag+" settled_runtime"); err != nil {
			return err
		}
		// For diagnosis, not the target: tell garbage the idle agent has
		// not collected yet from memory it still holds, by forcing a GC
		// through its pprof endpoint (heap?gc=1).
		if err := a.forceGC(a.ctx); err != nil {
			return err
		}
		gc, err := a.usage(a.ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(b.out, "%s after_forced_gc %s\n", tag, gc)
		return nil
	}()
	if err != nil {
		a.kill()
		return a.failure(err)
	}
	return a.stop(stopLimit)
}

// openChurn opens n connections to socket, churnParallel at a time, each
// with a SotW stream that requested "default", received it and ACKed it.
// It returns how each stream ended up (OK: got "default"), and fails only
// if none did.
func openChurn(ctx context.Context, socket string, n int) ([]*grpc.ClientConn, []*sdstest.Stream, codeCounts, error) {
	conns := make([]*grpc.ClientConn, n)
	streams := make([]*sdstest.Stream, n)
	errs := make([]error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range churnParallel {
		wg.Go(func() {
			for i := range next {
				errs[i] = func() error {
					sctx, cancel := context.WithTimeout(ctx, stepLimit)
					defer cancel()
					conn, err := dialChurn(sctx, socket)
					if err != nil {
						return err
					}
					conns[i] = conn
					st, err := sdstest.OpenStream(ctx, conn)
					if err != nil {
						return err
					}
					streams[i] = st
					if err := st.Request(sdstest.CertName); err != nil {
						return err
					}
					if _, err := firstCert(sctx, st); err != nil {
						return err
					}
					return st.ACK()
				}()
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	var opened []*grpc.ClientConn
	var open []*sdstest.Stream
	for i := range n {
		if streams[i] != nil {
			open = append(open, streams[i])
		}
		if conns[i] != nil {
			opened = append(opened, conns[i])
		}
	}
	// An agent that limits its streams refuses some: count them, and fail
	// only if no stream got its secret.
	got := codeCounts{}
	for _, err := range errs {
		got.add(err)
	}
	if got[codes.OK] == 0 {
		for _, st := range open {
			st.Close()
		}
		closeAll(opened)
		return nil, nil, nil, fmt.Errorf("open %d connections: %w", n, summarizeErrs(errs))
	}
	return opened, open, got, nil
}

// forceGC makes the agent run a garbage collection: its pprof heap
// profile with gc=1 collects first.
func (a *agentProc) forceGC(ctx context.Context) error {
	code, _, err := a.debugGet(ctx, "/debug/pprof/heap?gc=1")
	if err != nil {
		return fmt.Errorf("force gc: %w", err)
	}
	if code != http.StatusOK {
		return fmt.Errorf("force gc: status %d", code)
	}
	return nil
}

// dialChurn connects to socket and waits until the connection is ready,
// failing at once, where sdstest.Dial would retry, if the agent closes it
// before its HTTP/2 preface (a connection over its limit that it does
// not answer).
func dialChurn(ctx context.Context, socket string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	conn.Connect()
	for state := conn.GetState(); state != connectivity.Ready; state = conn.GetState() {
		if state == connectivity.TransientFailure {
			_ = conn.Close()
			return nil, status.Error(codes.Unavailable, "connection closed before it was ready")
		}
		if !conn.WaitForStateChange(ctx, state) {
			_ = conn.Close()
			return nil, fmt.Errorf("dial %s: last state %s: %w", socket, state, ctx.Err())
		}
	}
	return conn, nil
}

// runtimeMemGauges are the Go runtime's memory figures the churn prints
// after it settles: heap in use and free but not yet returned, stacks,
// span and GC metadata, and the rest the runtime allocated off the heap.
var runtimeMemGauges = []string{
	"go_memstats_heap_inuse_bytes", "go_memstats_heap_idle_bytes", "go_memstats_heap_released_bytes",
	"go_memstats_stack_inuse_bytes", "go_memstats_mspan_inuse_bytes", "go_memstats_gc_sys_bytes",
	"go_memstats_other_sys_bytes",
}

// printRuntimeMem prints, after label, where the agent's anonymous
// memory is by the Go runtime's account (runtimeMemGauges).
func (b *bencher) printRuntimeMem(a *agentProc, label string) error {
	rt, err := a.metrics(a.ctx, runtimeMemGauges...)
	if err != nil {
		return err
	}
	fmt.Fprint(b.out, label)
	for _, g := range runtimeMemGauges {
		fmt.Fprintf(b.out, " %s_kb=%d", strings.TrimSuffix(strings.TrimPrefix(g, "go_memstats_"), "_bytes"), int64(rt[g])/1024)
	}
	fmt.Fprintln(b.out)
	return nil
}

// goroutineStacks reads the agent's goroutine profile (pprof's debug=1
// text) and returns how many goroutines each stack holds, a stack named
// by its functions, outermost last.
func (a *agentProc) goroutineStacks(ctx context.Context) (map[string]int, error) {
	code, body, err := a.debugGet(ctx, "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return nil, fmt.Errorf("goroutine profile: %w", err)
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("goroutine profile: status %d", code)
	}
	return parseGoroutineStacks(string(body)), nil
}

// parseGoroutineStacks parses pprof's debug=1 goroutine text: groups
// separated by blank lines, each "N @ addresses" then "#\taddr\tfunc+off\tfile:line"
// lines.
func parseGoroutineStacks(text string) map[string]int {
	stacks := map[string]int{}
	for group := range strings.SplitSeq(text, "\n\n") {
		n, funcs := 0, []string(nil)
		for line := range strings.SplitSeq(group, "\n") {
			if count, _, ok := strings.Cut(line, " @ "); ok && n == 0 {
				n, _ = strconv.Atoi(count)
				continue
			}
			if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" {
				name, _, _ := strings.Cut(f[2], "+")
				funcs = append(funcs, name)
			}
		}
		if n > 0 && len(funcs) > 0 {
			stacks[strings.Join(funcs, " < ")] += n
		}
	}
	return stacks
}

// grownStacks returns, sorted, the stacks that hold more goroutines in
// after than in before, each with how many more; the debug server's
// goroutines for a connection (the profile's own request) are left out.
func grownStacks(before, after map[string]int) []string {
	var out []string
	for s, n := range after {
		if strings.Contains(s, "net/http.(*conn)") || strings.Contains(s, "net/http.(*connReader)") {
			continue
		}
		if d := n - before[s]; d > 0 {
			out = append(out, fmt.Sprintf("+%d %s", d, s))
		}
	}
	slices.Sort(out)
	return out
}
