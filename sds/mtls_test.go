package sds

import (
	"context"
	"strings"
	"testing"

	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// identity fetches default and ROOTCA from h over a SotW stream.
func (h *harness) identity() sdstest.Identity {
	h.t.Helper()
	st := h.openStream()
	if err := st.Request(def, root); err != nil {
		h.t.Fatal(err)
	}
	resp := h.recv(st)
	id, err := sdstest.IdentityFrom(resp.Secrets)
	if err != nil {
		h.t.Fatal(err)
	}
	return id
}

func TestMTLSBetweenServedIdentities(t *testing.T) {
	sharedRoot := testpki.NewRoot(t, "shared root")
	a := newHarnessWith(t, harnessOptions{root: sharedRoot})
	b := newHarnessWith(t, harnessOptions{root: sharedRoot})
	stranger := newHarness(t) // its own root
	a.publishLeaf(spiffeA)
	a.publishRoots()
	b.publishLeaf(spiffeB)
	b.publishRoots()
	stranger.publishLeaf(spiffeB)
	stranger.publishRoots()
	idA, idB, idStranger := a.identity(), b.identity(), stranger.identity()

	for _, pair := range []struct {
		name           string
		server, client sdstest.Identity
	}{
		{"a serves b", idA, idB},
		{"b serves a", idB, idA},
	} {
		t.Run(pair.name, func(t *testing.T) {
			if err := sdstest.MTLS(a.ctx(), pair.server, pair.client); err != nil {
				t.Fatalf("MTLS: %v", err)
			}
		})
	}

	t.Run("peer from another trust domain root is refused", func(t *testing.T) {
		err := sdstest.MTLS(a.ctx(), idA, idStranger)
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("MTLS = %v, want a verification error", err)
		}
	})
	t.Run("cancelled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := sdstest.MTLS(ctx, idA, idB); err == nil {
			t.Fatal("MTLS succeeded with a cancelled context")
		}
	})
	if got, err := idB.SPIFFEID(); err != nil || got != spiffeB {
		t.Errorf("SPIFFEID = %q, %v; want %s", got, err, spiffeB)
	}
}
