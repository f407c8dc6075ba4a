package caclient_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sdsagent/sdsagent/internal/caclient"
)

// Connect opens the connection and verifies the CA's certificate before
// any Sign, without sending a request; the first Sign then reuses that
// connection: the CA sees one handshake in all.
func TestConnectHandshakesBeforeTheFirstSign(t *testing.T) {
	fake := &fakeCA{}
	ca := startCA(t, fake)
	c := newClient(t, ca.config(t))
	if n := len(ca.serverNames()); n != 0 {
		t.Fatalf("New made %d handshakes, want none before Connect", n)
	}
	c.Connect()
	waitFor(t, "the connection to be up after Connect", c.Reachable)
	if got := ca.serverNames(); len(got) != 1 || got[0] != serverName {
		t.Fatalf("handshakes after Connect: SNI %q, want one with %q", got, serverName)
	}
	if n := len(fake.recorded()); n != 0 {
		t.Fatalf("Connect sent %d requests, want none", n)
	}
	mustSign(t, c)
	if n := len(ca.serverNames()); n != 1 {
		t.Fatalf("%d handshakes after Connect and Sign, want 1: Sign did not reuse the connection", n)
	}
}

// A Sign made while the connection Connect started is still being set
// up waits for it rather than failing.
func TestSignRightAfterConnect(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	c := newClient(t, ca.config(t))
	c.Connect()
	mustSign(t, c)
	if n := len(ca.serverNames()); n != 1 {
		t.Fatalf("%d handshakes, want 1", n)
	}
}

func TestConnectAfterCloseDoesNothing(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	c, err := caclient.New(ca.config(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c.Connect()
	if c.Reachable() {
		t.Fatal("Reachable after Close and Connect")
	}
	if n := len(ca.serverNames()); n != 0 {
		t.Fatalf("%d handshakes after Close, want none", n)
	}
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline (a hang, not a slow machine).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// Each verified handshake is logged at debug level, which dates the end
// of the TLS handshake in a start-up timeline (hack/coldphases).
func TestVerifiedHandshakeLogged(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	cfg := ca.config(t)
	core, logs := observer.New(zapcore.DebugLevel)
	cfg.Logger = zap.New(core)
	c := newClient(t, cfg)
	c.Connect()
	waitFor(t, "the connection to be up after Connect", c.Reachable)
	entries := logs.FilterMessage("ca certificate verified").All()
	if len(entries) != 1 {
		t.Fatalf("got %d verified logs, want 1; all: %v", len(entries), logs.All())
	}
	if got := entries[0].ContextMap()["server_name"]; got != serverName {
		t.Errorf("server_name = %v, want %s", got, serverName)
	}
}
