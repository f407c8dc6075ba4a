package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

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
	m, err := a.metrics(ctx, "go_goroutines", "go_memstats_heap_inuse_bytes")
	if err != nil {
		return usage{}, err
	}
	fds, err := a.openFDs()
	if err != nil {
		return usage{}, err
	}
	mem, err := a.status()
	if err != nil {
		return usage{}, err
	}
	return usage{goroutines: int(m["go_goroutines"]), fds: fds, mem: mem, heapInUse: int64(m["go_memstats_heap_inuse_bytes"]) / 1024}, nil
}

// churn opens churnConns connections to one agent, each with a stream
// that receives "default", then drops them all; churnRounds times. It
// prints the agent's goroutines, fds and memory at baseline, at each
// round's peak and right after it, and churnSettle after the last.
func (b *bencher) churn(ctx context.Context) error {
	s := b.sizes()
	// The agent inherits this process's limit; both need one fd per
	// connection and some.
	if err := raiseFDLimit(s.churnConns + 1024); err != nil {
		return err
	}
	a, err := b.startServing(ctx)
	if err != nil {
		return err
	}
	err = func() error {
		// As rss_kb does: after the agent released its startup pages (2 s
		// after its first certificate).
		if err := sleep(a.ctx, 3*time.Second); err != nil {
			return err
		}
		base, err := a.usage(a.ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(b.out, "churn conns=%d rounds=%d baseline %s\n", s.churnConns, s.churnRounds, base)
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
			fmt.Fprintf(b.out, "churn round=%d open_took=%s streams=%s peak %s\n", round, ms(opened), outcomes, peak)
			fmt.Fprintf(b.out, "churn round=%d right_after %s\n", round, after)
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
				fmt.Fprintf(b.out, "churn after=%s %s\n", waited, end)
			}
		}
		rss := func(u usage) int64 { return u.mem.anon + u.mem.file }
		ok := end.goroutines <= base.goroutines && end.fds <= base.fds && rss(end) <= targetChurnRSSFactor*rss(base)
		fmt.Fprintf(b.out, "churn settled_after=%s %s  [target goroutines and fds at baseline, rss <=%dx baseline: %s]\n",
			s.churnSettle, end, targetChurnRSSFactor, verdict(ok))
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
		fmt.Fprintf(b.out, "churn after_forced_gc %s\n", gc)
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
					conn, err := sdstest.Dial(sctx, socket)
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
	ctx, cancel := context.WithTimeout(ctx, stepLimit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.httpAddr+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("force gc: %w", err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("force gc: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("force gc: %s", resp.Status)
	}
	return nil
}
