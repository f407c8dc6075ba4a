package caclient_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/caclient"
)

// The Istio client is a cache.Prober: the manager uses it to renew the
// moment a CA that was down is back.
var _ cache.Prober = (*caclient.Client)(nil)

func TestWaitReachableSeesTheCAComeBack(t *testing.T) {
	addr := freeAddr(t) // nothing listens: the CA is down
	c := newClient(t, caclient.Config{Addr: addr, Plaintext: true})
	if _, err := sign(t, c); err == nil {
		t.Fatal("Sign succeeded with the CA down")
	}
	if c.Reachable() {
		t.Fatal("Reachable with the CA down")
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	up := make(chan error, 1)
	go func() { up <- c.WaitReachable(ctx) }()

	// The CA comes back on the same address.
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("address %s taken meanwhile: %v", addr, err)
	}
	fake := &fakeCA{}
	srv := grpc.NewServer()
	securityapi.RegisterIstioCertificateServiceServer(srv, fake)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})

	if err := <-up; err != nil {
		t.Fatalf("WaitReachable = %v, want nil once the CA listens", err)
	}
	if !c.Reachable() {
		t.Fatal("not Reachable after WaitReachable returned")
	}
	if n := len(fake.recorded()); n != 0 {
		t.Fatalf("the probe sent %d requests, want none", n)
	}
	mustSign(t, c)
}

func TestWaitReachableHonoursContext(t *testing.T) {
	c := newClient(t, caclient.Config{Addr: freeAddr(t), Plaintext: true})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.WaitReachable(ctx) }()
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("WaitReachable = nil with the CA down and ctx cancelled")
	}
}
