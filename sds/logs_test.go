package sds

import (
	"testing"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// TestPrivateKeyNeverLogged drives every logged path at debug level; the
// harness then checks that no
// published key appears in the JSON logs.
func TestPrivateKeyNeverLogged(t *testing.T) {
	h := newHarness(t)
	h.publishAll()
	st := h.openStream()
	if err := st.Request(def, root, "bogus"); err != nil {
		t.Fatal(err)
	}
	h.recv(st)
	if err := st.NACK("rejected"); err != nil {
		t.Fatal(err)
	}
	dst := h.openDelta()
	if err := dst.Subscribe(def); err != nil {
		t.Fatal(err)
	}
	h.recvDelta(dst)
	if err := dst.ACK(); err != nil {
		t.Fatal(err)
	}
	if _, err := sdstest.Fetch(h.ctx(), h.conn, []string{def}); err != nil {
		t.Fatal(err)
	}
	bad := leafSecret(h.issue(spiffeA))
	bad.CertChainPEM = nil
	h.store.Update([]*cache.Secret{bad}, nil)
	h.publishLeaf(spiffeA)
	h.recv(st)
	h.recvDelta(dst)

	if h.logs.FilterMessage("response sent").Len() == 0 {
		t.Error("no debug logs captured; the check would miss them")
	}
	for _, e := range h.logs.All() {
		if e.LoggerName != "sds" {
			t.Errorf("log from logger %q, want sds", e.LoggerName)
		}
	}
	h.checkNoKeyInLogs()
}
