package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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
// name, a message over the agent's 1 MiB limit (refused by the agent) and
// one over twice it (refused by gRPC before it is read).
func (b *bencher) limitRequests(a *agentProc, conn *grpc.ClientConn) error {
	for _, c := range []struct {
		what  string
		names []string
	}{
		{"names=1000", manyNames("default-", 1000)},
		{"name_bytes=8192", []string{strings.Repeat("x", 8192)}},
		{"message_bytes=1572864", []string{strings.Repeat("x", 3<<19)}},
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

// fileNamesPerStream is how many file-root: names each stream of
// limitFileWatches asks for: a per-request limit (100 on the sds branch)
// must not hide the limit on watched files.
const fileNamesPerStream = 100

// limitFileWatches asks for fileRoots file-root: names of CA files in as
// many directories, fileNamesPerStream per stream, and prints how many
// were served and the inotify watches the agent holds while the streams
// are open and after they closed.
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
	var (
		mu       sync.Mutex
		got      = map[string]bool{}
		outcomes = codeCounts{}
		wg       sync.WaitGroup
		streams  []*sdstest.Stream
	)
	defer func() {
		for _, st := range streams {
			st.Close()
		}
	}()
	start := time.Now()
	for chunk := range slices.Chunk(names, fileNamesPerStream) {
		st, err := sdstest.OpenStream(ctx, conn)
		if err != nil {
			return err
		}
		streams = append(streams, st)
		if err := st.Request(chunk...); err != nil {
			return err
		}
		wg.Go(func() {
			err := receiveAll(ctx, st, len(chunk), func(names []string) {
				mu.Lock()
				defer mu.Unlock()
				for _, n := range names {
					got[n] = true
				}
			})
			mu.Lock()
			outcomes.add(err)
			mu.Unlock()
		})
	}
	wg.Wait()
	took := time.Since(start)
	held, err := a.inotifyWatches()
	if err != nil {
		return err
	}
	for _, st := range streams {
		st.Close()
	}
	// The agent drops the watches when the streams go; give it a moment.
	after := held
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if after, err = a.inotifyWatches(); err != nil || after <= before {
			break
		}
		if err := sleep(a.ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	fmt.Fprintf(b.out, "limit_file_watches file_root_names=%d streams=%d served=%d stream_outcomes=%s took=%s inotify_watches_before=%d while_open=%d after_close=%d\n",
		len(names), len(streams), len(got), outcomes, ms(took), before, held, after)
	return nil
}

// errStillOpen is receiveAll's outcome for a stream that did not get
// every name and did not end either.
var errStillOpen = status.Error(codes.DeadlineExceeded, "stream still open without every name")

// receiveAll receives and ACKs responses on st until it has seen want
// names, the stream ends, or stepLimit passes without a first response
// (then 5 s without another); seen gets the names of each response. A SotW response of Secrets
// may carry only the names that changed, hence the count.
func receiveAll(ctx context.Context, st *sdstest.Stream, want int, seen func([]string)) error {
	names := map[string]bool{}
	rctx, cancel := context.WithTimeout(ctx, stepLimit)
	defer cancel()
	for {
		resp, err := st.Recv(rctx)
		if err != nil {
			if rctx.Err() != nil {
				return errStillOpen
			}
			return err
		}
		seen(resp.Names())
		for _, n := range resp.Names() {
			names[n] = true
		}
		if len(names) >= want {
			return nil
		}
		if err := st.ACK(); err != nil {
			return err
		}
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
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
