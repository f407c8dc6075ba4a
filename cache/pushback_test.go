package cache

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/internal/caapi"
	"github.com/sdsagent/sdsagent/internal/caclient"
	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/metrics"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// errPushback5s makes grpcCA answer ResourceExhausted with a
// grpc-retry-pushback-ms trailer of 5000.
var errPushback5s = errors.New("test: overloaded, come back in 5s")

func pushback5s(context.Context, testing.TB, *fakeCA, *x509.CertificateRequest, time.Duration) ([]string, error) {
	return nil, errPushback5s
}

// grpcCA serves IstioCertificateService over real gRPC and TLS, answering
// as its fakeCA's script says, and records the fake time of every call.
type grpcCA struct {
	ca *fakeCA

	mu      sync.Mutex
	arrived []time.Time
}

func (g *grpcCA) CreateCertificate(ctx context.Context, req *caapi.CertificateRequest) (*caapi.CertificateResponse, error) {
	g.mu.Lock()
	g.arrived = append(g.arrived, g.ca.clock.Now())
	g.mu.Unlock()
	chain, err := g.ca.Sign(ctx, []byte(req.GetCsr()), time.Duration(req.GetValidityDuration())*time.Second)
	if errors.Is(err, errPushback5s) {
		if err := grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", "5000")); err != nil {
			return nil, err
		}
		return nil, status.Error(codes.ResourceExhausted, "too many certificate requests pending")
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &caapi.CertificateResponse{CertChain: chain}, nil
}

func (g *grpcCA) calls() []time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]time.Time(nil), g.arrived...)
}

// newGRPCHarness is newHarness with the Manager's Signer a real
// caclient.Client talking TLS to a real gRPC server that answers as the
// fake CA's script says.
func newGRPCHarness(t *testing.T, mutate func(*Config), first ...answer) (*harness, *grpcCA) {
	t.Helper()
	clk := clocktest.New(start)
	core, logs := observer.New(zapcore.DebugLevel)
	id, err := pki.WorkloadID("cluster.local", "default", "web")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, clock: clk, ca: newFakeCA(t, clk), logs: logs, metrics: metrics.New(prometheus.NewRegistry()), id: id, done: make(chan error, 1)}
	h.ca.then(first...)
	g := &grpcCA{ca: h.ca}

	tlsRoot := testpki.NewRoot(t, "ca serving root")
	leaf := tlsRoot.IssueLeaf(t, testpki.LeafOptions{DNSNames: []string{"istiod.istio-system.svc"}})
	cert, err := tls.X509KeyPair(leaf.ChainPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(rootFile, tlsRoot.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})), caapi.ServerOption())
	caapi.Register(srv, g)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("serve: %v", err)
		}
	})
	client, err := caclient.New(caclient.Config{Addr: lis.Addr().String(), RootCertFile: rootFile, ServerName: "istiod.istio-system.svc"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := client.Close(); err != nil {
			t.Errorf("close ca client: %v", err)
		}
	})

	cfg := Config{
		ID: id, TTL: time.Hour, GraceRatio: 0.5, GraceJitter: 0.01,
		Rand:   func() float64 { return 0 },
		Signer: client, Clock: clk, Logger: zap.New(core), Metrics: h.metrics,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	h.mgr, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.run()
	return h, g
}

// TestManagerHonoursCAPushback runs the Manager against a real gRPC CA
// that answers ResourceExhausted with grpc-retry-pushback-ms: 5000: the
// next CSR is not sent before 5s of (fake) time, and is sent at 5s. The
// draw is 0, so without the pushback the retry would come after 0.1–0.25s;
// with an expired certificate issue 8's rule alone would allow 2s.
func TestManagerHonoursCAPushback(t *testing.T) {
	tests := []struct {
		name  string
		first []answer
		// refusedAt is which call (0-based) gets the pushback.
		refusedAt int
	}{
		{"no certificate yet", []answer{pushback5s}, 0},
		// A 4s certificate renewed at 2s: the pushback runs past its
		// expiry at 4s, and still holds.
		{"certificate expiring under the pushback", []answer{signFor(4 * time.Second), pushback5s}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, g := newGRPCHarness(t, nil, tt.first...)
			for range tt.refusedAt {
				h.waitCall()
				h.waitPublished()
				h.advanceToNextAttempt()
			}
			if tt.refusedAt == 0 {
				h.waitCall()
			}
			calls := g.calls()
			refused := calls[len(calls)-1]
			h.waitParked()
			due := refused.Add(5 * time.Second)
			if got := h.mgr.Status().NextRenewal; !got.Equal(due) {
				t.Fatalf("next attempt at %s after the pushback, want %s (5s after the refused call)", got.Sub(refused), due.Sub(refused))
			}
			// Move through everything the loop wakes for up to just
			// before the pushback ends (the certificate's expiry, in
			// the second case): no CSR goes out.
			for {
				at, ok := h.clock.NextDeadline()
				if !ok || !at.Before(due) {
					break
				}
				h.clock.Set(at)
				h.waitParked()
			}
			h.clock.Set(due.Add(-time.Millisecond))
			h.waitParked()
			if n := len(g.calls()); n != len(calls) {
				t.Fatalf("a CSR was sent %s after the CA asked for 5s", g.calls()[n-1].Sub(refused))
			}
			h.clock.Set(due)
			h.waitCall()
			h.waitParked() // the new certificate is published before the loop parks
			all := g.calls()
			if got := all[len(all)-1].Sub(refused); got != 5*time.Second {
				t.Fatalf("next CSR %s after the refused one, want 5s", got)
			}
			if err := h.mgr.Ready(); err != nil {
				t.Fatalf("Ready = %v after the CA signed", err)
			}
			fails := h.logs.FilterField(zap.Duration("ca_pushback", 5*time.Second)).Len()
			if fails != 1 {
				t.Errorf("%d failure logs with ca_pushback=5s, want 1", fails)
			}
		})
	}
}
