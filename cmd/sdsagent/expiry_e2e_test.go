package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// TestAgentExpiryIsAStateUntilTheCAIsBack runs the binary's agent and CA:
// with the CA gone past NotAfter, /ready, the metric, `sdsagent secrets`
// and SDS all say expired; a stream opened meanwhile is answered once the
// CA is back.
func TestAgentExpiryIsAStateUntilTheCAIsBack(t *testing.T) {
	caDir := filepath.Join(tempDir(t), "ca")
	addr := freeAddr(t)
	ca := startCAIn(t, caDir, addr)
	a := startAgent(t, ca.agentArgs(filepath.Join(tempDir(t), "s.sock"), "--secret-ttl", "3s"))
	a.logs.waitLine(t, "workload certificate issued")
	if code := ca.stop(t); code != 0 {
		t.Fatalf("ca exited %d", code)
	}

	a.logs.waitLine(t, "workload certificate expired; renewal keeps trying")
	code, body := a.get(t, "/ready")
	if code != 503 || !strings.Contains(body, "workload certificate expired at") || !strings.Contains(body, addr) {
		t.Fatalf("/ready = %d %q, want 503: expired since when, and the last error naming %s", code, body, addr)
	}
	if _, m := a.get(t, "/metrics"); !strings.Contains(m, "sdsagent_workload_cert_expired 1") {
		t.Fatalf("/metrics lacks sdsagent_workload_cert_expired 1")
	}
	var out, errOut bytes.Buffer
	if err := runSecrets(context.Background(), []string{"--http-addr", a.http}, func(string) string { return "" }, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "EXPIRED") {
		t.Fatalf("sdsagent secrets does not say EXPIRED:\n%s", out.String())
	}
	conn := dial(t, a.socket)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := sdstest.Fetch(ctx, conn, []string{"default"}); status.Code(err) != codes.NotFound {
		t.Fatalf("fetch of an expired default = %v, want NotFound (held)", err)
	}
	st := openStream(t, conn)
	if err := st.Request("default"); err != nil {
		t.Fatal(err)
	}

	startCAIn(t, caDir, addr)
	resp, err := recv(t, st, waitLimit)
	if err != nil {
		t.Fatalf("the stream held while expired got nothing after the CA came back: %v", err)
	}
	if resp.Secret("default") == nil {
		t.Fatalf("response %v lacks default", resp.Names())
	}
	if code, body := a.get(t, "/ready"); code != 200 {
		t.Fatalf("/ready after recovery = %d %q", code, body)
	}
}
