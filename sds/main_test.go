package sds

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/logtest"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/metrics"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	spiffeA = "spiffe://cluster.local/ns/a/sa/alpha"
	spiffeB = "spiffe://cluster.local/ns/b/sa/beta"

	// waitFor bounds waiting for anything that must happen.
	waitFor = 15 * time.Second
)

// testSource is a cache.Store that knows which names it can serve.
type testSource struct {
	*cache.Store
}

func (testSource) CheckName(name string) error {
	switch name {
	case cache.WorkloadCertName, cache.RootCertName:
		return nil
	}
	return fmt.Errorf("unknown resource %q: valid names are %s, %s", name, cache.WorkloadCertName, cache.RootCertName)
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// harness is one SDS server on a Unix socket in a short temp dir, fed by a
// cache.Store, with captured logs and its own metrics, and one client
// connection to it.
type harness struct {
	t       testing.TB
	store   *cache.Store
	srv     *Server
	socket  string
	metrics *metrics.Metrics
	logs    *logtest.Logs
	logText *syncBuffer
	root    *testpki.CA
	issuer  *testpki.CA
	conn    *grpc.ClientConn

	stopOnce sync.Once
	cancel   context.CancelFunc
	served   chan error
	serveErr error

	mu   sync.Mutex
	keys [][]byte // every private key published, to check logs
}

type harnessOptions struct {
	// root signs the harness's certificates; default a new root.
	root *testpki.CA
	// infoLogs logs at info instead of debug, as in production.
	infoLogs bool
	// source, if set, makes the server's source instead of testSource
	// over the harness's store.
	source func(*cache.Store) Source
	// clock is the server's clock; default the real one.
	clock clock.Clock
	// noDemander leaves Config.Demander nil even if the source takes
	// demand.
	noDemander bool
	// limits are the server's limits; zero fields get the defaults.
	limits Limits
	// untune leaves transport settings at gRPC's defaults.
	untune untune
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	return newHarnessWith(t, harnessOptions{})
}

func newHarnessWith(t testing.TB, opts harnessOptions) *harness {
	t.Helper()
	dir, err := os.MkdirTemp("", "sds")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })

	root := opts.root
	if root == nil {
		root = testpki.NewRoot(t, "test root")
	}
	level := zapcore.DebugLevel
	if opts.infoLogs {
		level = zapcore.InfoLevel
	}
	core, logs := logtest.NewCore(level)
	logText := &syncBuffer{}
	jsonCore := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(logText), level)
	h := &harness{
		t:       t,
		store:   cache.NewStore(clock.Real()),
		socket:  filepath.Join(dir, "sds.sock"),
		metrics: metrics.New(nil),
		logs:    logs,
		logText: logText,
		root:    root,
		issuer:  root.NewIntermediate(t, "test intermediate"),
		served:  make(chan error, 1),
	}
	var src Source = testSource{h.store}
	if opts.source != nil {
		src = opts.source(h.store)
	}
	// A source that takes demand (cache.Manager, demandSource) gets it,
	// as cmd/sdsagent wires it.
	demander, _ := src.(Demander)
	if opts.noDemander {
		demander = nil
	}
	h.srv, err = New(Config{
		SocketPath: h.socket,
		Source:     src,
		Demander:   demander,
		Logger:     zap.New(zapcore.NewTee(core, jsonCore)),
		Metrics:    h.metrics,
		Clock:      opts.clock,
		Limits:     opts.limits,
		untune:     opts.untune,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	lis, err := Listen(h.socket, DefaultSocketMode)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.served <- h.srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		if err := h.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
		h.checkNoKeyInLogs()
	})

	dctx, dcancel := context.WithTimeout(context.Background(), waitFor)
	defer dcancel()
	h.conn, err = sdstest.Dial(dctx, h.socket)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = h.conn.Close() })
	return h
}

// stop cancels Serve and returns its result; it is idempotent.
func (h *harness) stop() error {
	h.stopOnce.Do(func() {
		h.cancel()
		timer := time.NewTimer(waitFor)
		defer timer.Stop()
		select {
		case h.serveErr = <-h.served:
		case <-timer.C:
			h.serveErr = errors.New("serve did not return after cancel")
		}
	})
	return h.serveErr
}

// ctx returns a context that ends after waitFor or when the test ends.
func (h *harness) ctx() context.Context {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	h.t.Cleanup(cancel)
	return ctx
}

func leafSecret(l *testpki.Leaf) *cache.Secret {
	return &cache.Secret{
		Name:          cache.WorkloadCertName,
		Kind:          cache.TLSCertificate,
		CertChainPEM:  l.ChainPEM,
		PrivateKeyPEM: l.KeyPEM,
		Certs:         []*x509.Certificate{l.Cert},
		Source:        "test",
	}
}

func rootSecret(ca *testpki.CA) *cache.Secret {
	return &cache.Secret{
		Name:         cache.RootCertName,
		Kind:         cache.ValidationContext,
		TrustedCAPEM: ca.CertPEM,
		Certs:        []*x509.Certificate{ca.Cert},
		Source:       "test",
	}
}

// issue returns a new leaf for uri without publishing it.
func (h *harness) issue(uri string) *testpki.Leaf {
	h.t.Helper()
	l := h.issuer.IssueLeaf(h.t, testpki.LeafOptions{URIs: []string{uri}})
	h.mu.Lock()
	h.keys = append(h.keys, l.KeyPEM)
	h.mu.Unlock()
	return l
}

// publishLeaf issues and publishes a new "default" for uri.
func (h *harness) publishLeaf(uri string) *testpki.Leaf {
	h.t.Helper()
	l := h.issue(uri)
	h.store.Update([]*cache.Secret{leafSecret(l)}, nil)
	return l
}

// publishRoots publishes "ROOTCA" with the harness root.
func (h *harness) publishRoots() {
	h.t.Helper()
	h.store.Update([]*cache.Secret{rootSecret(h.root)}, nil)
}

// publishAll publishes a leaf for spiffeA and the roots, and waits until
// the server serves both (the first time; later calls do not wait).
func (h *harness) publishAll() *testpki.Leaf {
	h.t.Helper()
	l := h.publishLeaf(spiffeA)
	h.publishRoots()
	h.waitServed(def, root)
	return l
}

func (h *harness) openStream(opts ...sdstest.Option) *sdstest.Stream {
	h.t.Helper()
	st, err := sdstest.OpenStream(context.Background(), h.conn, opts...)
	if err != nil {
		h.t.Fatalf("OpenStream: %v", err)
	}
	h.t.Cleanup(st.Close)
	return st
}

func (h *harness) openDelta(opts ...sdstest.Option) *sdstest.DeltaStream {
	h.t.Helper()
	st, err := sdstest.OpenDeltaStream(context.Background(), h.conn, opts...)
	if err != nil {
		h.t.Fatalf("OpenDeltaStream: %v", err)
	}
	h.t.Cleanup(st.Close)
	return st
}

// recv waits for the next SotW response.
func (h *harness) recv(st *sdstest.Stream) *sdstest.Response {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	resp, err := st.Recv(ctx)
	if err != nil {
		h.t.Fatalf("Recv: %v", err)
	}
	return resp
}

// recvDelta waits for the next delta response.
func (h *harness) recvDelta(st *sdstest.DeltaStream) *sdstest.DeltaResponse {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	resp, err := st.Recv(ctx)
	if err != nil {
		h.t.Fatalf("Recv delta: %v", err)
	}
	return resp
}

// waitStreams waits until cond holds for the server's open streams.
func (h *harness) waitStreams(what string, cond func([]StreamInfo) bool) []StreamInfo {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := h.srv.waitStreams(ctx, cond); err != nil {
		h.t.Fatalf("waiting for %s: %v; streams: %+v", what, err, h.srv.Streams())
	}
	return h.srv.Streams()
}

// oneStream waits until exactly one stream is open and cond holds for it.
func (h *harness) oneStream(what string, cond func(StreamInfo) bool) StreamInfo {
	h.t.Helper()
	infos := h.waitStreams(what, func(s []StreamInfo) bool { return len(s) == 1 && cond(s[0]) })
	return infos[0]
}

// checkNoKeyInLogs fails if any published private key shows up in the
// logs, as PEM, as base64 of the PEM, or as any line of its body.
func (h *harness) checkNoKeyInLogs() {
	h.t.Helper()
	logs := h.logText.Bytes()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, key := range h.keys {
		needles := [][]byte{key, []byte(base64.StdEncoding.EncodeToString(key))}
		for _, line := range strings.Split(string(key), "\n") {
			if len(line) >= 16 && !strings.HasPrefix(line, "-----") {
				needles = append(needles, []byte(line))
			}
		}
		for _, n := range needles {
			if bytes.Contains(logs, n) {
				h.t.Errorf("private key material found in logs: %q", n)
				return
			}
		}
	}
}
