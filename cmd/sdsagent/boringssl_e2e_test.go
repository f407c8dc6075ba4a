package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/internal/testtools"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

const bsslHint = "apt-get install -y android-boringssl"

// servedFiles are an identity's SDS secrets written out for bssl-tool:
// the default chain (leaf first), its key and the ROOTCA bundle.
type servedFiles struct {
	chain, key, roots string
}

// writeServed writes what an agent served into dir as name.*.
func writeServed(t *testing.T, dir, name string, id sdstest.Identity) servedFiles {
	t.Helper()
	tc := id.Cert.GetTlsCertificate()
	f := servedFiles{
		chain: filepath.Join(dir, name+".chain.pem"),
		key:   filepath.Join(dir, name+".key.pem"),
		roots: filepath.Join(dir, name+".roots.pem"),
	}
	for path, data := range map[string][]byte{
		f.chain: tc.GetCertificateChain().GetInlineBytes(),
		f.key:   tc.GetPrivateKey().GetInlineBytes(),
		f.roots: id.Roots.GetValidationContext().GetTrustedCa().GetInlineBytes(),
	} {
		if len(data) == 0 {
			t.Fatalf("%s: the agent served nothing for it", filepath.Base(path))
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// bsslServer is a running `bssl-tool server -loop`.
type bsslServer struct {
	port string
	// out is its output; it reports connections on stderr.
	out *logBuffer
}

// startBSSLServer runs `bssl-tool server -accept PORT -key -cert
// -require-any-client-cert -loop` with f's key and chain on a free port
// until the test ends, and returns once it accepts connections.
func startBSSLServer(t *testing.T, bssl string, f servedFiles) *bsslServer {
	t.Helper()
	// bssl-tool takes a port number, not a listener: pick a free one, and
	// pick again should another process take it first.
	var lastErr error
	for range 3 {
		s, err := tryBSSLServer(t, bssl, f)
		if err == nil {
			return s
		}
		lastErr = err
	}
	t.Fatalf("bssl-tool server did not start: %v", lastErr)
	return nil
}

func tryBSSLServer(t *testing.T, bssl string, f servedFiles) (*bsslServer, error) {
	_, port, err := net.SplitHostPort(freeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	s := &bsslServer{port: port, out: newLogBuffer()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*waitLimit)
	cmd := exec.CommandContext(ctx, bssl, "server", "-accept", port, "-key", f.key, "-cert", f.chain,
		"-require-any-client-cert", "-loop")
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		cancel()
		<-exited
	}
	// Wait until it listens: the probe's empty connection is one failed
	// handshake, which -loop survives.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitLimit)
	for {
		if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", port), time.Second); err == nil {
			c.Close()
			t.Cleanup(stop)
			return s, nil
		}
		select {
		case err := <-exited:
			cancel()
			exited <- err
			return nil, fmt.Errorf("exited (%v) before listening on %s: %s", err, port, s.out.String())
		case <-deadline:
			stop()
			t.Fatalf("bssl-tool server not listening on %s after %s: %s", port, waitLimit, s.out.String())
		case <-tick.C:
		}
	}
}

// bsslClient runs `bssl-tool client -connect -root-certs roots` with the
// key and chain in f (none if f is nil), and returns its output and exit
// error. It reads no input, so it closes once the handshake is done.
func bsslClient(t *testing.T, bssl, port, roots string, f *servedFiles) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	args := []string{"client", "-connect", net.JoinHostPort("127.0.0.1", port), "-root-certs", roots}
	if f != nil {
		args = append(args, "-key", f.key, "-cert", f.chain)
	}
	out, err := exec.CommandContext(ctx, bssl, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("bssl-tool client did not finish within %s:\n%s", waitLimit, out)
	}
	return string(out), err
}

// meshCA is a way to run the CA the agents get their identities from.
type meshCA struct {
	name  string
	start func(t *testing.T) *testCA
}

// bsslMeshCAs are the CAs the BoringSSL test runs: the dev CA's own root;
// an intermediate made by `sdsagent ca init-intermediate` (with its name
// constraint) plugged into it; and an Easy-RSA intermediate plugged in.
var bsslMeshCAs = []meshCA{
	{name: "self-signed root", start: func(t *testing.T) *testCA { return startCA(t, "127.0.0.1:0") }},
	{name: "plugged-in intermediate", start: func(t *testing.T) *testCA {
		return newEnterprisePKI(t, "cluster.local").startMeshCA(t, "cluster.local")
	}},
	{name: "plugged-in Easy-RSA intermediate", start: func(t *testing.T) *testCA {
		dir := tempDir(t)
		script(t, dir, easyRSAScript, "EASYRSA="+needEasyRSA(t), "EASYRSA_ALGO=ec", "EASYRSA_CURVE=prime256v1")
		return startCAIn(t, filepath.Join(dir, "cacerts"), "127.0.0.1:0")
	}},
}

// TestBoringSSLAcceptsServedIdentities hands what two agents with
// different identities serve to BoringSSL's bssl-tool, the TLS stack
// Envoy is built on: one agent's default as the server's certificate,
// the other's as the client's, each verifying the peer with its own
// ROOTCA. bssl-tool's server requires a client certificate (and checks
// the client holds its key) but has no flag to verify its chain, so each
// pair runs both ways: every chain is verified once by a BoringSSL client.
func TestBoringSSLAcceptsServedIdentities(t *testing.T) {
	bssl := testtools.Need(t, "bssl-tool", bsslHint)
	foreign := filepath.Join(tempDir(t), "foreign-root.pem")
	if err := os.WriteFile(foreign, testpki.NewRoot(t, "foreign root").CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, mc := range bsslMeshCAs {
		t.Run(mc.name, func(t *testing.T) {
			ca := mc.start(t)
			for _, kt := range []pki.KeyType{pki.ECDSAP256, pki.ECDSAP384, pki.RSA2048} {
				t.Run(string(kt), func(t *testing.T) {
					dir := tempDir(t)
					web := startAgent(t, ca.agentArgs(filepath.Join(dir, "web.sock"), "--service-account", "web", "--key-type", string(kt)))
					db := startAgent(t, ca.agentArgs(filepath.Join(dir, "db.sock"), "--service-account", "db", "--key-type", string(kt)))
					webID, dbID := identity(t, web.socket), identity(t, db.socket)
					for want, id := range map[string]sdstest.Identity{"web": webID, "db": dbID} {
						if got, err := id.SPIFFEID(); err != nil || got != "spiffe://cluster.local/ns/default/sa/"+want {
							t.Fatalf("%s agent serves %q (%v)", want, got, err)
						}
					}
					files := map[string]servedFiles{
						"web": writeServed(t, dir, "web", webID),
						"db":  writeServed(t, dir, "db", dbID),
					}
					checkBoringSSL(t, bssl, files["web"], files["db"], foreign)
					checkBoringSSL(t, bssl, files["db"], files["web"], foreign)
				})
			}
		})
	}
}

// checkBoringSSL runs a bssl-tool server with server's identity and
// connects bssl-tool clients to it: with client's identity and ROOTCA the
// handshake completes; with a foreign root the chain fails to verify;
// without a client certificate the server refuses.
func checkBoringSSL(t *testing.T, bssl string, server, client servedFiles, foreignRoot string) {
	t.Helper()
	s := startBSSLServer(t, bssl, server)

	out, err := bsslClient(t, bssl, s.port, client.roots, &client)
	if err != nil || !strings.Contains(out, "Connected.") {
		t.Fatalf("bssl-tool client with its ROOTCA: %v\n%s\nserver:\n%s", err, out, s.out.String())
	}
	// The server saw the client's certificate: it prints the connection
	// only after a handshake with one.
	s.out.waitFor(t, `"Connected."`, func() bool { return strings.Contains(s.out.String(), "Connected.") })

	out, err = bsslClient(t, bssl, s.port, foreignRoot, &client)
	if err == nil || !strings.Contains(out, "CERTIFICATE_VERIFY_FAILED") {
		t.Fatalf("bssl-tool client with a foreign root: %v, want CERTIFICATE_VERIFY_FAILED:\n%s", err, out)
	}

	out, err = bsslClient(t, bssl, s.port, client.roots, nil)
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || !strings.Contains(out, "CERTIFICATE_REQUIRED") {
		t.Fatalf("bssl-tool client without a certificate: %v, want the server to refuse it:\n%s", err, out)
	}
	if n := strings.Count(s.out.String(), "Connected."); n != 1 {
		t.Fatalf("server completed %d handshakes, want only the one with the client's certificate:\n%s", n, s.out.String())
	}
}
