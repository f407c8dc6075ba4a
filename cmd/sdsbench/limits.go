package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// limits asks one agent for too much, one way after the other, and prints
// what the agent holds or answers. It prints a figure whether or not the
// agent limits the request: every wait is bounded.
func (b *bencher) limits(ctx context.Context) error {
	a, err := b.startServing(ctx)
	if err != nil {
		return err
	}
	err = func() error {
		conn, err := dial(a.ctx, a.socket)
		if err != nil {
			return err
		}
		defer conn.Close()
		for _, f := range []func(*agentProc, *grpc.ClientConn) error{
			b.limitRequests, b.limitFileWatches, b.limitStreamsOnConn, b.limitHalfOpen,
		} {
			if err := f(a, conn); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		a.kill()
		return a.failure(err)
	}
	return a.stop(stopLimit)
}

// limitRequests prints the answer to oversized fetches: many names, a long
// name, a message over gRPC's default 4 MiB.
func (b *bencher) limitRequests(a *agentProc, conn *grpc.ClientConn) error {
	for _, c := range []struct {
		what  string
		names []string
	}{
		{"names=1000", manyNames("default-", 1000)},
		{"name_bytes=8192", []string{strings.Repeat("x", 8192)}},
		{"message_bytes=5242880", []string{strings.Repeat("x", 5<<20)}},
	} {
		start := time.Now()
		_, err := fetch(a.ctx, conn, c.names)
		if a.ctx.Err() != nil {
			return fmt.Errorf("fetch %s: %w", c.what, err)
		}
		st := status.Convert(err)
		fmt.Fprintf(b.out, "limit_request fetch %s code=%s took=%s message=%q\n",
			c.what, st.Code(), ms(time.Since(start)), truncate(st.Message(), 100))
	}
	return nil
}

// limitFileWatches asks on one stream for fileRoots file-root: names of
// CA files in as many directories, and prints the inotify watches the
// agent holds while the stream is open and after it closed.
func (b *bencher) limitFileWatches(a *agentProc, conn *grpc.ClientConn) error {
	s := b.sizes()
	root, err := os.ReadFile(filepath.Join(b.ca.dir, "root-cert.pem"))
	if err != nil {
		return err
	}
	base := filepath.Join(b.tmp, "roots")
	defer os.RemoveAll(base)
	names := make([]string, s.fileRoots)
	for i := range names {
		dir := filepath.Join(base, fmt.Sprintf("d%04d", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		p := filepath.Join(dir, "ca.pem")
		if err := os.WriteFile(p, root, 0o644); err != nil {
			return err
		}
		names[i] = "file-root:" + p
	}
	before, err := a.inotifyWatches()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(a.ctx, 2*stepLimit)
	defer cancel()
	st, err := sdstest.OpenStream(ctx, conn)
	if err != nil {
		return err
	}
	defer st.Close()
	start := time.Now()
	if err := st.Request(names...); err != nil {
		return err
	}
	// Wait for a response with every name, the end of the stream, or the
	// limit; any of them is a result.
	// After the first response, 5 s without another ends the wait.
	// A SotW response of Secrets may carry only the names that changed, so
	// count every name received.
	got := map[string]bool{}
	outcome := "no_full_response"
	rctx := ctx
	for {
		resp, err := st.Recv(rctx)
		if err != nil {
			if rctx.Err() == nil {
				outcome = "stream_ended:" + status.Code(err).String()
			}
			break
		}
		var rcancel context.CancelFunc
		rctx, rcancel = context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		for _, n := range resp.Names() {
			got[n] = true
		}
		if len(got) == len(names) {
			outcome = "all_served"
			break
		}
		if err := st.ACK(); err != nil {
			break
		}
	}
	took := time.Since(start)
	held, err := a.inotifyWatches()
	if err != nil {
		return err
	}
	st.Close()
	// The agent drops the watches when the stream goes; give it a moment.
	after := held
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if after, err = a.inotifyWatches(); err != nil || after <= before {
			break
		}
		if err := sleep(a.ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	fmt.Fprintf(b.out, "limit_file_watches file_root_names=%d outcome=%s served=%d took=%s inotify_watches_before=%d while_open=%d after_close=%d\n",
		len(names), outcome, len(got), ms(took), before, held, after)
	return nil
}

// limitStreamsOnConn opens streamsOnConn streams on one connection, each
// asking for "default", and prints how many were answered.
func (b *bencher) limitStreamsOnConn(a *agentProc, _ *grpc.ClientConn) error {
	n := b.sizes().streamsOnConn
	ctx, cancel := context.WithTimeout(a.ctx, 2*stepLimit)
	defer cancel()
	conn, err := dial(ctx, a.socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	got := codeCounts{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	streams := make([]*sdstest.Stream, n)
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			err := func() error {
				st, err := sdstest.OpenStream(ctx, conn)
				if err != nil {
					return err
				}
				streams[i] = st
				if err := st.Request(sdstest.CertName); err != nil {
					return err
				}
				rctx, rcancel := context.WithTimeout(ctx, stepLimit)
				defer rcancel()
				_, err = st.Recv(rctx)
				return err
			}()
			mu.Lock()
			got.add(err)
			mu.Unlock()
		})
	}
	wg.Wait()
	took := time.Since(start)
	for _, st := range streams {
		if st != nil {
			st.Close()
		}
	}
	fmt.Fprintf(b.out, "limit_streams_per_conn streams=%d outcomes=%s took=%s\n", n, got, ms(took))
	return nil
}

// limitHalfOpen opens halfOpen connections that never send the HTTP/2
// preface and prints how many the agent closed within halfOpenWait, and
// when.
func (b *bencher) limitHalfOpen(a *agentProc, _ *grpc.ClientConn) error {
	s := b.sizes()
	conns := make([]net.Conn, 0, s.halfOpen)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	var d net.Dialer
	for range s.halfOpen {
		c, err := d.DialContext(a.ctx, "unix", a.socket)
		if err != nil {
			return fmt.Errorf("half-open connection %d: %w", len(conns)+1, err)
		}
		conns = append(conns, c)
	}
	start := time.Now()
	deadline := start.Add(s.halfOpenWait)
	closedAt := make([]time.Duration, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		_ = c.SetReadDeadline(deadline)
		wg.Go(func() {
			buf := make([]byte, 1024)
			for {
				if _, err := c.Read(buf); err != nil {
					var ne net.Error
					if !errors.As(err, &ne) || !ne.Timeout() {
						closedAt[i] = time.Since(start)
					}
					return
				}
			}
		})
	}
	wg.Wait()
	var closed []time.Duration
	for _, t := range closedAt {
		if t > 0 {
			closed = append(closed, t)
		}
	}
	line := fmt.Sprintf("limit_half_open conns=%d closed_by_agent=%d wait=%s", len(conns), len(closed), s.halfOpenWait)
	if len(closed) > 0 {
		sum := summarize(closed)
		line += fmt.Sprintf(" close_after_median=%s max=%s", ms(sum.median), ms(sum.max))
	}
	fmt.Fprintln(b.out, line)
	return nil
}

func manyNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
