package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

func TestAgentServesIdentityThatCompletesMTLS(t *testing.T) {
	ca := startCA(t, "127.0.0.1:0")
	dir := tempDir(t)
	web := startAgent(t, ca.agentArgs(filepath.Join(dir, "web.sock"), "--namespace", "shop", "--service-account", "web"))
	db := startAgent(t, ca.agentArgs(filepath.Join(dir, "db.sock"), "--namespace", "shop", "--service-account", "db", "--key-type", "rsa-2048"))

	webID := identity(t, web.socket)
	dbID := identity(t, db.socket)
	for name, id := range map[string]sdstest.Identity{"web": webID, "db": dbID} {
		got, err := id.SPIFFEID()
		if err != nil {
			t.Fatal(err)
		}
		if want := "spiffe://cluster.local/ns/shop/sa/" + name; got != want {
			t.Fatalf("%s identity = %s, want %s", name, got, want)
		}
		chain := id.Cert.GetTlsCertificate().GetCertificateChain().GetInlineBytes()
		if n := bytes.Count(chain, []byte("BEGIN CERTIFICATE")); n != 1 {
			t.Fatalf("%s chain has %d certificates, want the leaf only (the self-signed root is not repeated)", name, n)
		}
		roots := id.Roots.GetValidationContext().GetTrustedCa().GetInlineBytes()
		caRoot, err := os.ReadFile(filepath.Join(ca.dir, "root-cert.pem"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(bytes.TrimSpace(roots), bytes.TrimSpace(caRoot)) {
			t.Fatalf("%s ROOTCA is not the CA's root", name)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := sdstest.MTLS(ctx, webID, dbID); err != nil {
		t.Fatalf("mTLS web->db: %v", err)
	}
	if err := sdstest.MTLS(ctx, dbID, webID); err != nil {
		t.Fatalf("mTLS db->web: %v", err)
	}

	// The other two APIs serve the same identity.
	conn := dial(t, web.socket)
	fetched, err := sdstest.Fetch(ctx, conn, []string{"default", "ROOTCA"})
	if err != nil {
		t.Fatal(err)
	}
	if got := fetched.Secret("default").GetTlsCertificate().GetCertificateChain().GetInlineBytes(); !bytes.Equal(got, webID.Cert.GetTlsCertificate().GetCertificateChain().GetInlineBytes()) {
		t.Fatal("FetchSecrets returned another chain than StreamSecrets")
	}
	dctx, dcancel := context.WithCancel(ctx)
	defer dcancel()
	delta, err := sdstest.OpenDeltaStream(dctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer delta.Close()
	if err := delta.Subscribe("default", "ROOTCA"); err != nil {
		t.Fatal(err)
	}
	dresp, err := delta.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(dresp.Secrets) != 2 {
		t.Fatalf("delta returned %v", dresp.Names())
	}

	if code, body := web.get(t, "/ready"); code != 200 {
		t.Fatalf("/ready = %d %s", code, body)
	}
	if code, body := web.get(t, "/metrics"); code != 200 || !strings.Contains(body, `sdsagent_csr_requests_total{result="success"} 1`) {
		t.Fatalf("/metrics = %d, missing the CSR count:\n%s", code, body)
	}
	line := web.logs.waitLine(t, "workload certificate issued")
	for _, k := range []string{"serial", "not_after", "csr_duration", "spiffe_id"} {
		if _, ok := line[k]; !ok {
			t.Fatalf("issuance log line lacks %q: %v", k, line)
		}
	}
	key := webID.Cert.GetTlsCertificate().GetPrivateKey().GetInlineBytes()
	block, _ := pem.Decode(key)
	if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		t.Fatalf("served key is not PKCS#8: %v", err)
	}
	body := bytes.Join(bytes.Split(key, []byte("\n"))[1:2], nil)
	for _, logs := range []string{web.logs.String(), ca.logs.String()} {
		if strings.Contains(logs, string(body)) || strings.Contains(logs, "PRIVATE KEY") {
			t.Fatal("private key material in the logs")
		}
	}
}

func TestAgentStartsBeforeCAAndServesOnceItIsUp(t *testing.T) {
	// Create the CA's root and token, then stop it: the agent starts with the
	// CA down.
	caDir := filepath.Join(tempDir(t), "ca")
	addr := freeAddr(t)
	first := startCAIn(t, caDir, addr)
	if code := first.stop(t); code != 0 {
		t.Fatalf("ca exited %d", code)
	}
	down := &testCA{addr: addr, dir: caDir}
	a := startAgent(t, down.agentArgs(filepath.Join(tempDir(t), "s.sock")))

	// The socket listens at once; the request waits instead of being
	// answered empty: the first response, read once the CA is up, must
	// carry default.
	st := openStream(t, dial(t, a.socket))
	if err := st.Request("default"); err != nil {
		t.Fatal(err)
	}
	a.logs.waitLine(t, "certificate request failed; no workload certificate to serve yet")
	if code, body := a.get(t, "/ready"); code != 503 || !strings.Contains(body, addr) {
		t.Fatalf("/ready while the CA is down = %d %q, want 503 naming %s", code, body, addr)
	}

	startCAIn(t, caDir, addr)
	resp, err := recv(t, st, waitLimit)
	if err != nil {
		t.Fatalf("no certificate after the CA came up: %v\n%s", err, a.logs.String())
	}
	if resp.Secret("default") == nil {
		t.Fatalf("the first response %v lacks default: answered before any certificate existed", resp.Names())
	}
}

func TestAgentReportsRejectedToken(t *testing.T) {
	ca := startCA(t, "127.0.0.1:0")
	dir := tempDir(t)
	token := filepath.Join(dir, "wrong-token")
	if err := os.WriteFile(token, []byte("not-the-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := ca.agentArgs(filepath.Join(dir, "s.sock"))
	for i := range args {
		if args[i] == "--token-file" {
			args[i+1] = token
		}
	}
	a := startAgent(t, args)
	line := a.logs.waitLine(t, "certificate request failed")
	if msg, _ := line["error"].(string); !strings.Contains(msg, token) {
		t.Fatalf("failure log does not name the token file %s: %v", token, line)
	}
	if code, body := a.get(t, "/ready"); code != 503 || !strings.Contains(body, token) {
		t.Fatalf("/ready = %d %q, want 503 naming the token file", code, body)
	}
	if strings.Contains(a.logs.String(), "not-the-token") {
		t.Fatal("the token appears in the logs")
	}
}

func TestAgentTTLOverCAMaxIsClearAndNotATightLoop(t *testing.T) {
	ca := startCA(t, "127.0.0.1:0", "--max-ttl", "24h")
	a := startAgent(t, ca.agentArgs(filepath.Join(tempDir(t), "s.sock"), "--secret-ttl", "48h"))
	line := a.logs.waitLine(t, "certificate request failed")
	if msg, _ := line["error"].(string); !strings.Contains(msg, "greater than the max allowed TTL") {
		t.Fatalf("failure log does not say the TTL is too long: %v", line)
	}
	// Retries back off: the third attempt comes at least
	// 0.5s×0.5 + 1s×0.5 after the first (initial 0.5s, doubling, ±50%).
	first := time.Now()
	a.logs.waitFor(t, "3 CSR attempts", func() bool { return strings.Count(a.logs.String(), "certificate request failed") >= 3 })
	if took := time.Since(first); took < 750*time.Millisecond {
		t.Fatalf("3 CSR attempts within %s: want a backoff, not a tight loop", took)
	}
	_, body := a.get(t, "/metrics")
	if !regexp.MustCompile(`sdsagent_csr_requests_total\{result="ca_error"\} [3-9]`).MatchString(body) {
		t.Fatalf("ca_error count missing from /metrics:\n%s", body)
	}
}

func TestBinarySIGTERMExitsCleanly(t *testing.T) {
	ca := startCA(t, "127.0.0.1:0")
	socket := filepath.Join(tempDir(t), "s.sock")
	cmd := exec.Command(binPath, ca.agentArgs(socket)...)
	logs := newLogBuffer()
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
	})
	identity(t, socket)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sdsagent run exited with %v after SIGTERM; logs:\n%s", err, logs.String())
		}
	case <-time.After(waitLimit):
		t.Fatal("sdsagent run did not exit after SIGTERM")
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Fatalf("socket left behind after exit: %v", err)
	}
	logs.waitLine(t, "agent stopped")
}

func TestSubcommands(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"version", []string{"version"}, 0, "sdsagent "},
		{"no command", nil, 2, "Usage: sdsagent"},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"run help", []string{"run", "--help"}, 0, "SECRET_GRACE_PERIOD_RATIO"},
		{"bad flag", []string{"run", "--secret-ttl", "soon"}, 1, "not a duration"},
		{"ca without dir", []string{"ca"}, 1, "--dir is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(context.Background(), tt.args, func(string) string { return "" }, &out, &errOut)
			if code != tt.wantCode || !strings.Contains(out.String()+errOut.String(), tt.wantOut) {
				t.Fatalf("exit %d, output %q; want exit %d and %q", code, out.String()+errOut.String(), tt.wantCode, tt.wantOut)
			}
		})
	}
}
