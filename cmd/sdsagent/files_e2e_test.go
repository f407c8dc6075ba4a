package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/filewatch/filewatchtest"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// mountedArgs are `run` arguments for an agent whose CA address has
// nothing listening, so only files can give it an identity.
func mountedArgs(t *testing.T, socket string, extra ...string) []string {
	t.Helper()
	return append([]string{"run",
		"--ca-addr", freeAddr(t),
		"--ca-root-cert", filepath.Join(tempDir(t), "absent-root.pem"),
		"--socket", socket,
		"--http-addr", "127.0.0.1:0",
		"--log-format", "json",
	}, extra...)
}

func mountedFiles(root *testpki.CA, l *testpki.Leaf) map[string][]byte {
	return map[string][]byte{"cert-chain.pem": l.ChainPEM, "key.pem": l.KeyPEM, "root-cert.pem": root.CertPEM}
}

func TestAgentServesMountedCertsWithoutCA(t *testing.T) {
	dir := tempDir(t)
	certDir := filepath.Join(dir, "certs")
	root := testpki.NewRoot(t, "mounted root")
	first := root.IssueLeaf(t, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/shop/sa/web"}})
	filewatchtest.KubeletWrite(t, certDir, mountedFiles(root, first))
	a := startAgent(t, mountedArgs(t, filepath.Join(dir, "s.sock"), "--file-mounted-certs", "--cert-dir", certDir))

	if line := a.logs.waitLine(t, "workload certificate source"); line["source"] != "files" || line["cert_dir"] != certDir {
		t.Fatalf("source log line = %v, want source files in %s", line, certDir)
	}
	st := openStream(t, dial(t, a.socket))
	if err := st.Request("default", "ROOTCA"); err != nil {
		t.Fatal(err)
	}
	resp := recvIdentity(t, st)
	if got := resp.Secret("default").GetTlsCertificate().GetCertificateChain().GetInlineBytes(); !bytes.Equal(got, first.ChainPEM) {
		t.Fatal("default is not the mounted chain")
	}
	if got := resp.Secret("ROOTCA").GetValidationContext().GetTrustedCa().GetInlineBytes(); !bytes.Equal(got, root.CertPEM) {
		t.Fatal("ROOTCA is not the mounted root")
	}
	if code, body := a.get(t, "/ready"); code != 200 {
		t.Fatalf("/ready = %d %s", code, body)
	}

	// Kubernetes rotates the secret volume: the new chain is pushed.
	next := root.IssueLeaf(t, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/shop/sa/web"}})
	filewatchtest.KubeletWrite(t, certDir, mountedFiles(root, next))
	resp, err := recv(t, st, waitLimit)
	if err != nil {
		t.Fatalf("no push after the mounted files changed: %v", err)
	}
	if got := resp.Secret("default").GetTlsCertificate().GetCertificateChain().GetInlineBytes(); !bytes.Equal(got, next.ChainPEM) {
		t.Fatal("the pushed default is not the new mounted chain")
	}

	// file-cert: names work through the binary too.
	extra := root.IssueLeaf(t, testpki.LeafOptions{DNSNames: []string{"gateway.example"}})
	for name, content := range map[string][]byte{"tls.crt": extra.ChainPEM, "tls.key": extra.KeyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	name := "file-cert:" + filepath.Join(dir, "tls.crt") + "~" + filepath.Join(dir, "tls.key")
	gw := openStream(t, dial(t, a.socket))
	if err := gw.Request(name); err != nil {
		t.Fatal(err)
	}
	gresp, err := recv(t, gw, waitLimit)
	if err != nil {
		t.Fatal(err)
	}
	if got := gresp.Secret(name).GetTlsCertificate().GetCertificateChain().GetInlineBytes(); !bytes.Equal(got, extra.ChainPEM) {
		t.Fatalf("file-cert answer %v does not carry the file's chain", gresp.Names())
	}

	logs := a.logs.String()
	if strings.Contains(logs, "certificate request failed") || strings.Contains(logs, "PRIVATE KEY") {
		t.Fatalf("the agent called the CA or logged key material:\n%s", logs)
	}
	if _, body := a.get(t, "/metrics"); strings.Contains(body, "sdsagent_csr_requests_total{") {
		t.Fatal("CSRs were sent in mounted mode")
	}
}

func TestAgentAutoDetectsMountedCerts(t *testing.T) {
	dir := tempDir(t)
	certDir := filepath.Join(dir, "certs")
	root := testpki.NewRoot(t, "mounted root")
	filewatchtest.KubeletWrite(t, certDir, mountedFiles(root, root.IssueLeaf(t, testpki.LeafOptions{})))

	auto := startAgent(t, mountedArgs(t, filepath.Join(dir, "auto.sock"), "--cert-dir", certDir))
	if line := auto.logs.waitLine(t, "workload certificate source"); line["source"] != "files" || line["file_mounted_certs"] != "auto" {
		t.Fatalf("with the files present, source log line = %v, want files (auto)", line)
	}
	identity(t, auto.socket)

	off := startAgent(t, mountedArgs(t, filepath.Join(dir, "off.sock"), "--cert-dir", certDir, "--file-mounted-certs=false"))
	if line := off.logs.waitLine(t, "workload certificate source"); line["source"] != "ca" {
		t.Fatalf("with --file-mounted-certs=false, source log line = %v, want ca", line)
	}
}

func TestAgentWritesOutputCerts(t *testing.T) {
	ca := startCA(t, "127.0.0.1:0")
	dir := tempDir(t)
	out := filepath.Join(dir, "out")
	a := startAgent(t, ca.agentArgs(filepath.Join(dir, "s.sock"), "--output-dir", out))
	id := identity(t, a.socket)

	want := map[string][]byte{
		"cert-chain.pem": id.Cert.GetTlsCertificate().GetCertificateChain().GetInlineBytes(),
		"key.pem":        id.Cert.GetTlsCertificate().GetPrivateKey().GetInlineBytes(),
		"root-cert.pem":  id.Roots.GetValidationContext().GetTrustedCa().GetInlineBytes(),
	}
	deadline := time.Now().Add(waitLimit)
	for name, content := range want {
		for {
			got, err := os.ReadFile(filepath.Join(out, name))
			if err == nil && bytes.Equal(got, content) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s does not hold what the agent serves", name)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	fi, err := os.Stat(filepath.Join(out, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem has mode %o, want 600", fi.Mode().Perm())
	}
}
