package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"net"
	"strings"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/debug"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds"
)

// secretsAgent is a debug endpoint serving real certificates through the
// real sds.ToProto, as `sdsagent run` wires it.
type secretsAgent struct {
	addr               string
	chainPEM, rootsPEM []byte
	keyPEM             []byte
}

func startSecretsAgent(t *testing.T) *secretsAgent {
	t.Helper()
	root := testpki.NewRoot(t, "root")
	leaf := root.IssueLeaf(t, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/default/sa/foo"}})
	store := cache.NewStore(clock.Real())
	store.Update([]*cache.Secret{
		{Name: cache.WorkloadCertName, Kind: cache.TLSCertificate, CertChainPEM: leaf.ChainPEM, PrivateKeyPEM: pki.PrivateKeyPEM(leaf.KeyPEM)},
		{Name: cache.RootCertName, Kind: cache.ValidationContext, TrustedCAPEM: root.CertPEM},
	}, nil)
	srv, err := debug.New(debug.Config{Addr: "127.0.0.1:0", Ready: func() error { return nil }, Secrets: debugSecrets(store, sds.ToProto)})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveDebug(t, srv)
	return &secretsAgent{addr: addr, chainPEM: leaf.ChainPEM, rootsPEM: root.CertPEM, keyPEM: leaf.KeyPEM}
}

func TestSecretsCommand(t *testing.T) {
	a := startSecretsAgent(t)
	closed := freeAddr(t)
	noEnv := func(string) string { return "" }
	envAddr := func(addr string) func(string) string {
		return func(k string) string {
			if k == "SDSAGENT_HTTP_ADDR" {
				return addr
			}
			return ""
		}
	}
	tests := []struct {
		name    string
		args    []string
		getenv  func(string) string
		check   func(t *testing.T, out string)
		wantErr []string
	}{
		{name: "table", args: []string{"--http-addr", a.addr}, getenv: noEnv, check: func(t *testing.T, out string) {
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 3 {
				t.Fatalf("table has %d lines, want header + 2:\n%s", len(lines), out)
			}
			if !strings.HasPrefix(lines[0], "RESOURCE NAME     TYPE           STATUS     VALID CERT     SERIAL NUMBER") {
				t.Errorf("header = %q", lines[0])
			}
			for i, want := range [][]string{{"default", "Cert Chain", "ACTIVE", "true"}, {"ROOTCA", "CA", "ACTIVE", "true"}} {
				for _, w := range want {
					if !strings.Contains(lines[i+1], w) {
						t.Errorf("row %d %q lacks %q", i+1, lines[i+1], w)
					}
				}
			}
		}},
		{name: "table NAME", args: []string{"--http-addr", a.addr, "ROOTCA"}, getenv: noEnv, check: func(t *testing.T, out string) {
			if n := strings.Count(out, "\n"); n != 2 || !strings.Contains(out, "ROOTCA") || strings.Contains(out, "default") {
				t.Errorf("table ROOTCA =\n%s", out)
			}
		}},
		{name: "json", args: []string{"--http-addr", a.addr, "-o", "json"}, getenv: noEnv, check: func(t *testing.T, out string) {
			dump, err := debug.ParseSecrets([]byte(out))
			if err != nil {
				t.Fatal(err)
			}
			if n := len(dump.GetDynamicActiveSecrets()); n != 2 {
				t.Fatalf("json has %d secrets, want 2", n)
			}
			sec := &tlsv3.Secret{}
			if err := dump.GetDynamicActiveSecrets()[0].GetSecret().UnmarshalTo(sec); err != nil {
				t.Fatal(err)
			}
			if got := sec.GetTlsCertificate().GetPrivateKey().GetInlineString(); got != "[redacted]" {
				t.Errorf("json private key = %q, want Envoy's marker [redacted]", got)
			}
		}},
		{name: "pem default", args: []string{"--http-addr", a.addr, "-o", "pem", "default"}, getenv: noEnv, check: func(t *testing.T, out string) {
			if out != string(a.chainPEM) {
				t.Errorf("pem default =\n%s\nwant\n%s", out, a.chainPEM)
			}
		}},
		{name: "flags after NAME", args: []string{"ROOTCA", "-o", "pem", "--http-addr", a.addr}, getenv: noEnv, check: func(t *testing.T, out string) {
			if out != string(a.rootsPEM) {
				t.Errorf("pem ROOTCA =\n%s\nwant\n%s", out, a.rootsPEM)
			}
		}},
		{name: "env address", args: []string{"-o", "pem", "ROOTCA"}, getenv: envAddr(a.addr), check: func(t *testing.T, out string) {
			if out != string(a.rootsPEM) {
				t.Errorf("pem ROOTCA via env = %q", out)
			}
		}},
		{name: "flag wins over env", args: []string{"--http-addr", a.addr, "-o", "pem", "ROOTCA"}, getenv: envAddr(closed), check: func(t *testing.T, out string) {
			if out != string(a.rootsPEM) {
				t.Errorf("pem ROOTCA = %q", out)
			}
		}},
		{name: "unknown NAME", args: []string{"--http-addr", a.addr, "-o", "pem", "file-root:/nope"}, getenv: noEnv,
			wantErr: []string{`"file-root:/nope" is not served`, "default, ROOTCA"}},
		{name: "unknown NAME table", args: []string{"--http-addr", a.addr, "nope"}, getenv: noEnv,
			wantErr: []string{`"nope" is not served`, "default, ROOTCA"}},
		{name: "pem without NAME", args: []string{"--http-addr", a.addr, "-o", "pem"}, getenv: noEnv, wantErr: []string{"-o pem needs a NAME"}},
		{name: "json with NAME", args: []string{"--http-addr", a.addr, "-o", "json", "default"}, getenv: noEnv, wantErr: []string{"jq"}},
		{name: "bad format", args: []string{"--http-addr", a.addr, "-o", "yaml"}, getenv: noEnv, wantErr: []string{`unknown output format "yaml"`}},
		{name: "two names", args: []string{"--http-addr", a.addr, "default", "ROOTCA"}, getenv: noEnv, wantErr: []string{"unexpected arguments"}},
		{name: "unreachable", args: []string{"--http-addr", closed}, getenv: noEnv,
			wantErr: []string{"agent not reachable at " + closed, "`sdsagent run` is running", "--http-addr"}},
		{name: "unreachable via env", args: nil, getenv: envAddr(closed), wantErr: []string{"agent not reachable at " + closed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := runSecrets(context.Background(), tt.args, tt.getenv, &stdout, &stderr)
			for _, out := range [][]byte{stdout.Bytes(), stderr.Bytes(), []byte(errString(err))} {
				if bytes.Contains(out, a.keyPEM) || bytes.Contains(out, []byte(base64.StdEncoding.EncodeToString(a.keyPEM))) || bytes.Contains(out, []byte("PRIVATE KEY")) {
					t.Fatal("output contains the private key")
				}
			}
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("runSecrets succeeded, want error; stdout:\n%s", stdout.String())
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("runSecrets = %v; stderr: %s", err, stderr.String())
			}
			tt.check(t, stdout.String())
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// serveDebug serves srv on a loopback port until the test ends and
// returns its address.
func serveDebug(t *testing.T, srv *debug.Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
	return lis.Addr().String()
}
