package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// Targets of issue 13 against the floor server, measured in the same run.
const (
	// targetConnRatio: the agent answers new connections within 1.1× of
	// the floor's time.
	targetConnRatio = 1.1
	// targetConnAnonRatio: RssAnon with 1,000 open connections at most
	// 0.6× the floor's.
	targetConnAnonRatio = 0.6
	// connMemConns is how many connections the memory figure holds.
	connMemConns = 1000
)

// floorLimit is the time the conns and connmem figures add to
// overallLimit; together they take under a minute.
const floorLimit = 120 * time.Second

// connBursts are the sizes of the conns figure: n connections opened at
// once, reps times, alternating agent and floor.
func (b *bencher) connBursts() []struct{ n, reps int } {
	if b.p.quick {
		return []struct{ n, reps int }{{1, 3}, {100, 1}, {1000, 1}}
	}
	return []struct{ n, reps int }{{1, 20}, {100, 5}, {1000, 3}}
}

func conns1(c *grpc.ClientConn) []*grpc.ClientConn { return []*grpc.ClientConn{c} }

// connsFigure measures answering 1, 100 and 1,000 new connections: each
// connection's time from dial to its first valid "default" response, on
// the agent and on the floor server, bursts alternating between them so
// that the shared machine's load falls on both alike.
func (b *bencher) connsFigure(ctx context.Context) error {
	a, err := b.startServing(ctx)
	if err != nil {
		return err
	}
	defer a.kill()
	f, err := b.startFloor(ctx)
	if err != nil {
		return a.failure(err)
	}
	defer f.kill()
	var lines []string
	for _, burst := range b.connBursts() {
		var agentTimes, floorTimes []time.Duration
		for rep := range burst.reps {
			order := []string{a.socket, f.socket}
			if rep%2 == 1 {
				order[0], order[1] = order[1], order[0]
			}
			for _, socket := range order {
				times, err := newConnTimes(ctx, socket, burst.n)
				if err != nil {
					if socket == a.socket {
						return a.failure(fmt.Errorf("%d new connections: %w", burst.n, err))
					}
					return f.failure(fmt.Errorf("%d new connections: %w", burst.n, err))
				}
				if socket == a.socket {
					agentTimes = append(agentTimes, times...)
				} else {
					floorTimes = append(floorTimes, times...)
				}
			}
		}
		as, fs := summarize(agentTimes), summarize(floorTimes)
		ratio := float64(as.median) / float64(fs.median)
		lines = append(lines, fmt.Sprintf("conns_new n=%d bursts=%d agent_median=%s floor_median=%s ratio=%.2f agent_p90=%s floor_p90=%s  [target ratio<=%.1f: %s]",
			burst.n, burst.reps, ms(as.median), ms(fs.median), ratio, ms(as.p90), ms(fs.p90), targetConnRatio, verdict(ratio <= targetConnRatio)))
	}
	if err := f.stop(stopLimit); err != nil {
		return err
	}
	if err := a.stop(stopLimit); err != nil {
		return err
	}
	for _, l := range lines {
		fmt.Fprintln(b.out, l)
	}
	return nil
}

// newConnTimes opens n connections to socket at once, each with a SotW
// stream asking for "default", and returns each one's time from the
// start of its dial to its first valid "default" response. It closes
// them all before it returns.
func newConnTimes(ctx context.Context, socket string, n int) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, stepLimit)
	defer cancel()
	times := make([]time.Duration, n)
	errs := make([]error, n)
	conns := make([]*grpc.ClientConn, n)
	streams := make([]*sdstest.Stream, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			t0 := time.Now()
			c, err := sdstest.Dial(ctx, socket)
			if err != nil {
				errs[i] = err
				return
			}
			conns[i] = c
			st, err := sdstest.OpenStream(ctx, c)
			if err != nil {
				errs[i] = err
				return
			}
			streams[i] = st
			if err := st.Request(sdstest.CertName); err != nil {
				errs[i] = err
				return
			}
			if _, err := firstCert(ctx, st); err != nil {
				errs[i] = err
				return
			}
			times[i] = time.Since(t0)
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if streams[i] != nil {
			streams[i].Close()
		}
		if conns[i] != nil {
			_ = conns[i].Close()
		}
	}
	return times, summarizeErrs(errs)
}

// connMemFigure reads RssAnon and RssFile of the agent and of the floor
// server with one open connection and with connMemConns, each with a
// SotW stream that received "default" and ACKed it.
func (b *bencher) connMemFigure(ctx context.Context) error {
	a, err := b.startServing(ctx)
	if err != nil {
		return err
	}
	defer a.kill()
	f, err := b.startFloor(ctx)
	if err != nil {
		return a.failure(err)
	}
	defer f.kill()
	agent, err := b.heldWith(a.ctx, a.proc, a.socket)
	if err != nil {
		return a.failure(err)
	}
	floor, err := b.heldWith(f.ctx, f.proc, f.socket)
	if err != nil {
		return f.failure(err)
	}
	if err := f.stop(stopLimit); err != nil {
		return err
	}
	if err := a.stop(stopLimit); err != nil {
		return err
	}
	for i, n := range []int{1, connMemConns} {
		line := fmt.Sprintf("conn_rss_kb conns=%d agent_anon=%d agent_file=%d floor_anon=%d floor_file=%d anon_ratio=%.2f",
			n, agent[i].anon, agent[i].file, floor[i].anon, floor[i].file, float64(agent[i].anon)/float64(floor[i].anon))
		if n == connMemConns {
			ok := float64(agent[i].anon) <= targetConnAnonRatio*float64(floor[i].anon)
			line += fmt.Sprintf("  [target anon_ratio<=%.1f: %s]", targetConnAnonRatio, verdict(ok))
		}
		fmt.Fprintln(b.out, line)
	}
	return nil
}

// heldWith opens one connection with a stream to socket, then
// connMemConns in all, and returns p's memory after each, once settled.
func (b *bencher) heldWith(ctx context.Context, p *proc, socket string) ([2]memory, error) {
	var out [2]memory
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, 2*stepLimit)
	defer dcancel()
	conns, err := dialN(dctx, socket, 1)
	if err != nil {
		return out, err
	}
	defer func() { closeAll(conns) }()
	for i, n := range []int{1, connMemConns} {
		if len(conns) < n {
			more, err := dialN(dctx, socket, n-len(conns))
			if err != nil {
				return out, err
			}
			conns = append(conns, more...)
		}
		set, err := openStreams(ctx, conns, n)
		if err != nil {
			return out, err
		}
		err = sleep(ctx, b.p.rssSettle)
		if err == nil {
			out[i], err = p.status()
		}
		// The next step opens a stream on every connection, the first
		// one included: close these so that each has one.
		set.close()
		if err != nil {
			return out, err
		}
	}
	return out, nil
}
