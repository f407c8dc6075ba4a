package sds_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/caclient"
	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/devca"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/sds"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// TestRotationPushedToOpenStreams runs the whole agent in one process,
// the development CA over real TLS included, with one fake clock, and
// moves the clock to the renewal time: the new certificate must reach
// open SotW and delta streams without the clients asking again.
func TestRotationPushedToOpenStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clk := clocktest.New(time.Now())
	log := zaptest.NewLogger(t)
	dir, err := os.MkdirTemp("", "rot")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	ca, err := devca.New(devca.Config{Dir: filepath.Join(dir, "ca"), Clock: clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := caclient.New(caclient.Config{Addr: lis.Addr().String(), RootCertFile: ca.RootCertPath(), TokenFile: ca.TokenPath(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer signer.Close()
	id, _ := pki.WorkloadID("cluster.local", "default", "web")
	mgr, err := cache.New(cache.Config{ID: id, TTL: time.Hour, Signer: signer, Clock: clk, Logger: log, Rand: func() float64 { return 0.5 }})
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "s.sock")
	srv, err := sds.New(sds.Config{SocketPath: socket, Source: mgr, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	errs := make(chan error, 3)
	go func() { errs <- ca.Serve(runCtx, lis) }()
	go func() { errs <- mgr.Run(runCtx) }()
	go func() { errs <- srv.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		for range 3 {
			if err := <-errs; err != nil {
				t.Errorf("component returned %v", err)
			}
		}
	})

	conn, err := sdstest.Dial(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sotw, err := sdstest.OpenStream(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer sotw.Close()
	delta, err := sdstest.OpenDeltaStream(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer delta.Close()
	if err := sotw.Request("default", "ROOTCA"); err != nil {
		t.Fatal(err)
	}
	if err := delta.Subscribe("default"); err != nil {
		t.Fatal(err)
	}
	first, err := sotw.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	firstDelta, err := delta.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sotw.ACK(); err != nil {
		t.Fatal(err)
	}
	if err := delta.ACK(); err != nil {
		t.Fatal(err)
	}
	firstID, err := sdstest.IdentityFrom(first.Secrets)
	if err != nil {
		t.Fatal(err)
	}

	// Renewal is due at half of the 1h lifetime less the jitter (0.01×0.5).
	if !clk.WaitForTimers(1, 10*time.Second) {
		t.Fatal("manager is not waiting for the renewal time")
	}
	renewAt := mgr.Status().NextRenewal
	if d := renewAt.Sub(clk.Now()); d < 29*time.Minute || d > 30*time.Minute {
		t.Fatalf("renewal due in %s, want about 30m", d)
	}
	clk.Set(renewAt)

	pushed, err := sotw.Recv(ctx)
	if err != nil {
		t.Fatalf("no rotation pushed on the SotW stream: %v", err)
	}
	pushedDelta, err := delta.Recv(ctx)
	if err != nil {
		t.Fatalf("no rotation pushed on the delta stream: %v", err)
	}
	if got := pushed.Names(); len(got) != 1 || got[0] != "default" {
		t.Fatalf("SotW push carries %v, want only the changed default", got)
	}
	oldChain := first.Secret("default").GetTlsCertificate().GetCertificateChain().GetInlineBytes()
	newChain := pushed.Secret("default").GetTlsCertificate().GetCertificateChain().GetInlineBytes()
	if string(oldChain) == string(newChain) {
		t.Fatal("pushed the same certificate")
	}
	if string(pushedDelta.Secret("default").GetTlsCertificate().GetCertificateChain().GetInlineBytes()) != string(newChain) ||
		pushedDelta.Versions["default"] == firstDelta.Versions["default"] {
		t.Fatal("delta stream did not receive the rotated certificate with a new version")
	}
	// The rotated key and chain form a pair issued to the same identity.
	rotated := sdstest.Identity{Cert: pushed.Secret("default"), Roots: firstID.Roots}
	if _, err := rotated.Certificate(); err != nil {
		t.Fatalf("rotated key and chain: %v", err)
	}
	if got, _ := rotated.SPIFFEID(); got != id.String() {
		t.Fatalf("rotated identity %q, want %s", got, id)
	}
}
