package sds

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// connMemory serves "default" with the transport settings off left at
// gRPC's defaults, opens n connections with one ACKed SotW stream each,
// and returns the heap and stack the process holds per connection, after
// a GC. The clients are in the same process and hold the same memory
// whatever the server's settings, so a difference between two settings
// is the server's.
func connMemory(tb testing.TB, off untune, n int) float64 {
	tb.Helper()
	dir, err := os.MkdirTemp("", "tr")
	if err != nil {
		tb.Fatal(err)
	}
	defer os.RemoveAll(dir)
	root := testpki.NewRoot(tb, "transport root")
	leaf := root.IssueLeaf(tb, testpki.LeafOptions{URIs: []string{spiffeA}})
	store := cache.NewStore(clock.Real())
	store.Update([]*cache.Secret{leafSecret(leaf)}, nil)
	socket := filepath.Join(dir, "s")
	srv, err := New(Config{SocketPath: socket, Source: testSource{store}, untune: off})
	if err != nil {
		tb.Fatal(err)
	}
	lis, err := Listen(socket, DefaultSocketMode)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	served := make(chan error, 1)
	sctx, stop := context.WithCancel(ctx)
	go func() { served <- srv.Serve(sctx, lis) }()
	defer func() {
		stop()
		if err := <-served; err != nil {
			tb.Errorf("Serve: %v", err)
		}
	}()

	before := heldMemory()
	conns := make([]*grpc.ClientConn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range n {
		c, err := sdstest.Dial(ctx, socket)
		if err != nil {
			tb.Fatal(err)
		}
		conns = append(conns, c)
		st, err := sdstest.OpenStream(ctx, c)
		if err != nil {
			tb.Fatal(err)
		}
		defer st.Close()
		if err := st.Request(def); err != nil {
			tb.Fatal(err)
		}
		if _, err := st.Recv(ctx); err != nil {
			tb.Fatal(err)
		}
		if err := st.ACK(); err != nil {
			tb.Fatal(err)
		}
	}
	// Measure once the server has taken in every ACK: then every
	// connection is as Envoy leaves it between rotations.
	if err := srv.waitStreams(ctx, func(infos []StreamInfo) bool {
		for _, in := range infos {
			if in.AckedVersion == "" {
				return false
			}
		}
		return len(infos) == n
	}); err != nil {
		tb.Fatal(err)
	}
	if c, _ := srv.Open(); c != n {
		tb.Fatalf("Open() = %d connections, want %d", c, n)
	}
	return float64(heldMemory()-before) / float64(n)
}

// heldMemory returns the heap in use plus goroutine stacks after a GC.
func heldMemory() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}

// TestIdleConnectionsHoldNoReadBuffer checks that an idle connection
// holds no read buffer: gRPC reads a bare socket into pooled buffers
// only while data is there, but did not see the socket behind the
// wrapper that counts handshake timeouts, and gave every connection a
// 32 KB buffer of its own for its whole life. (Its 32 KB write buffer is
// already pooled by default in grpc-go 1.85.)
func TestIdleConnectionsHoldNoReadBuffer(t *testing.T) {
	const n = 50
	pinned := connMemory(t, untunePollRead|untuneBufferSizes|untuneWindows, n)
	tuned := connMemory(t, 0, n)
	t.Logf("held per connection: gRPC defaults %.1f KB, tuned %.1f KB", pinned/1024, tuned/1024)
	// Ask for most of the 32 KB, not all, so that what the runtime
	// rounds or keeps does not decide the outcome.
	if pinned-tuned < 24<<10 {
		t.Fatalf("tuned transport holds %.1f KB per connection, gRPC defaults %.1f KB: want at least 24 KB less",
			tuned/1024, pinned/1024)
	}
}

// transportSteps turn the transport settings on one after the other.
var transportSteps = []struct {
	name string
	off  untune
}{
	{"grpc_defaults", untunePollRead | untuneBufferSizes | untuneWindows},
	{"+poll_read", untuneBufferSizes | untuneWindows},
	{"+16KB_buffers", untuneWindows},
	{"+static_64KB_windows", 0},
}

// BenchmarkConnMemory reports the heap and stacks held per idle
// connection (server and its in-process client) as the transport
// settings are turned on one after the other: what each one buys.
func BenchmarkConnMemory(b *testing.B) {
	const n = 200
	for _, s := range transportSteps {
		b.Run(s.name, func(b *testing.B) {
			var per float64
			for b.Loop() {
				per = connMemory(b, s.off, n)
			}
			b.ReportMetric(per/1024, "KB/conn")
		})
	}
}

// BenchmarkStreamRequest measures a new SotW stream's request answered
// (open, request, response) on a connection, with 100 other streams open
// on 10 connections as in sdsbench's request figure, as the transport
// settings are turned on one after the other: what each one costs.
func BenchmarkStreamRequest(b *testing.B) {
	for _, s := range transportSteps {
		b.Run(s.name, func(b *testing.B) {
			h := newHarnessWith(b, harnessOptions{infoLogs: true, untune: s.off})
			h.publishAll()
			ctx := h.ctx()
			conns := []*grpc.ClientConn{h.conn}
			for range 9 {
				c, err := sdstest.Dial(ctx, h.socket)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = c.Close() })
				conns = append(conns, c)
			}
			for i := range 100 {
				st, err := sdstest.OpenStream(ctx, conns[i%len(conns)])
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(st.Close)
				if err := st.Request(def); err != nil {
					b.Fatal(err)
				}
				h.recv(st)
				if err := st.ACK(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				st, err := sdstest.OpenStream(ctx, conns[i%len(conns)])
				if err != nil {
					b.Fatal(err)
				}
				i++
				if err := st.Request(def); err != nil {
					b.Fatal(err)
				}
				h.recv(st)
				st.Close()
			}
		})
	}
}

// TestRequestLargerThanTheWindowIsServed checks that the static 64 KB
// flow-control windows do not stop a request up to the message size
// limit: a first request carrying a 600 KB node is answered.
func TestRequestLargerThanTheWindowIsServed(t *testing.T) {
	h := newHarness(t)
	h.publishAll()
	node := &corev3.Node{Id: strings.Repeat("n", 600<<10), Cluster: sdstest.DefaultNodeCluster}
	st, err := sdstest.OpenStream(h.ctx(), h.conn, sdstest.WithNode(node))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Request(def); err != nil {
		t.Fatal(err)
	}
	resp := h.recv(st)
	if resp.Secret(def) == nil {
		t.Fatalf("response names %v, want %q", resp.Names(), def)
	}
}
