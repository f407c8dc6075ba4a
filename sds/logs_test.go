package sds

import (
	"slices"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// TestPrivateKeyNeverLogged drives every logged path at debug level,
// go-control-plane's own logs included; the harness then checks that no
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

	if h.logs.FilterLoggerName("sds.xds").Len() == 0 {
		t.Error("no go-control-plane debug logs captured; the check would miss them")
	}
	for _, e := range h.logs.All() {
		if e.LoggerName != "sds" && e.LoggerName != "sds.xds" {
			t.Errorf("log from logger %q, want sds or sds.xds", e.LoggerName)
		}
	}
	h.checkNoKeyInLogs()
}

func TestXDSLoggerOnlyAtDebug(t *testing.T) {
	for _, tt := range []struct {
		name  string
		level zapcore.Level
		want  bool
	}{
		{"info", zapcore.InfoLevel, false},
		{"debug", zapcore.DebugLevel, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(tt.level)
			l := newXDSLogger(zap.New(core))
			l.Infof("[linear cache] open watch %d", 1)
			l.Warnf("warn %s", "x")
			if got := logs.Len() > 0; got != tt.want {
				t.Fatalf("logged = %v, want %v", got, tt.want)
			}
			for _, e := range logs.All() {
				if e.Level != zapcore.DebugLevel || !slices.Contains([]string{"xds"}, e.LoggerName) {
					t.Errorf("entry %v %q", e.Level, e.LoggerName)
				}
			}
		})
	}
}
