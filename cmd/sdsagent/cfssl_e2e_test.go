package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdsagent/sdsagent/internal/cfsslclient/cfssltest"
	"github.com/sdsagent/sdsagent/internal/testtools"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// cfsslInitCA runs the README's commands for a CFSSL CA in dir:
// `cfssl genkey -initca ca-csr.json | cfssljson -bare ca`.
func cfsslInitCA(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	cfssl := testtools.Need(t, "cfssl", "make tools")
	cfssljson := testtools.Need(t, "cfssljson", "make tools")
	csr := `{"CN": "mesh root", "key": {"algo": "ecdsa", "size": 256}, "names": [{"O": "example"}]}`
	if err := os.WriteFile(filepath.Join(dir, "ca-csr.json"), []byte(csr), 0o600); err != nil {
		t.Fatal(err)
	}
	gen := exec.Command(cfssl, "genkey", "-initca", "ca-csr.json")
	gen.Dir = dir
	out, err := gen.Output()
	if err != nil {
		t.Fatalf("cfssl genkey -initca: %v", err)
	}
	bare := exec.Command(cfssljson, "-bare", "ca")
	bare.Dir, bare.Stdin = dir, bytes.NewReader(out)
	if msg, err := bare.CombinedOutput(); err != nil {
		t.Fatalf("cfssljson -bare ca: %v\n%s", err, msg)
	}
	return filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
}

func TestAgentWithCFSSLServesIdentityThatCompletesMTLS(t *testing.T) {
	dir := tempDir(t)
	caFile, caKey := cfsslInitCA(t, dir)
	srv := cfssltest.Start(t, cfssltest.Options{CACertFile: caFile, CAKeyFile: caKey})
	keyFile := filepath.Join(dir, "auth-key.hex")
	if err := os.WriteFile(keyFile, []byte(srv.AuthKeyHex+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := func(socket, sa string) []string {
		return []string{"run",
			"--ca-provider", "cfssl",
			"--ca-addr", srv.URL,
			"--ca-root-cert", caFile,
			"--cfssl-profile", cfssltest.ProfileAuth,
			"--cfssl-auth-key-file", keyFile,
			"--socket", socket,
			"--http-addr", "127.0.0.1:0",
			"--log-format", "json",
			"--namespace", "shop", "--service-account", sa,
		}
	}
	web := startAgent(t, args(filepath.Join(dir, "web.sock"), "web"))
	db := startAgent(t, args(filepath.Join(dir, "db.sock"), "db"))

	// identity reads default and ROOTCA over SDS; sdstest validates every
	// Secret with ValidateAll.
	webID, dbID := identity(t, web.socket), identity(t, db.socket)
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	for name, id := range map[string]sdstest.Identity{"web": webID, "db": dbID} {
		got, err := id.SPIFFEID()
		if err != nil {
			t.Fatal(err)
		}
		if want := "spiffe://cluster.local/ns/shop/sa/" + name; got != want {
			t.Fatalf("%s identity = %s, want %s", name, got, want)
		}
		roots := id.Roots.GetValidationContext().GetTrustedCa().GetInlineBytes()
		if !bytes.Equal(bytes.TrimSpace(roots), bytes.TrimSpace(caPEM)) {
			t.Fatalf("%s ROOTCA is not the CA made by cfssl genkey -initca", name)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := sdstest.MTLS(ctx, webID, dbID); err != nil {
		t.Fatalf("mTLS web->db: %v", err)
	}
	line := web.logs.waitLine(t, "starting agent")
	if line["ca_provider"] != "cfssl" {
		t.Fatalf("start line %v", line)
	}
	if strings.Contains(web.logs.String(), srv.AuthKeyHex) || strings.Contains(web.logs.String(), "PRIVATE KEY") {
		t.Fatal("key material in the logs")
	}
}

func TestAgentWithCFSSLReportsAWrongAuthKey(t *testing.T) {
	dir := tempDir(t)
	srv := cfssltest.Start(t, cfssltest.Options{})
	keyFile := filepath.Join(dir, "auth-key.hex")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("0f", 16)), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, []string{"run",
		"--ca-provider", "cfssl", "--ca-addr", srv.URL, "--ca-root-cert", srv.RootFile,
		"--cfssl-profile", cfssltest.ProfileAuth, "--cfssl-auth-key-file", keyFile,
		"--socket", filepath.Join(dir, "s.sock"), "--http-addr", "127.0.0.1:0", "--log-format", "json"})
	line := a.logs.waitLine(t, "certificate request failed; no workload certificate to serve yet")
	msg, _ := line["error"].(string)
	if !strings.Contains(msg, "invalid token") || !strings.Contains(msg, keyFile) {
		t.Fatalf("failure line %v", line)
	}
	if code, _ := a.get(t, "/ready"); code == 200 {
		t.Fatal("ready without a certificate")
	}
}
