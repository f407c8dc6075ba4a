package cfsslclient_test

import (
	"context"
	"crypto"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sdsagent/sdsagent/internal/cfsslclient"
	"github.com/sdsagent/sdsagent/internal/cfsslclient/cfssltest"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitLimit bounds every call to a test server.
const waitLimit = 20 * time.Second

func newClient(t *testing.T, cfg cfsslclient.Config) *cfsslclient.Client {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = waitLimit
	}
	c, err := cfsslclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// csr returns a new key and a CSR for a workload identity.
func csr(t *testing.T) (crypto.Signer, pki.ID, []byte) {
	t.Helper()
	id, err := pki.WorkloadID("cluster.local", "shop", "web")
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.GenerateKey(pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	der, err := pki.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	return key, id, der
}

// sign makes one Sign and verifies the answer as the cache does.
func sign(t *testing.T, c *cfsslclient.Client) (*pki.Bundle, []string, error) {
	t.Helper()
	key, id, req := csr(t)
	chain, err := c.Sign(context.Background(), req, 24*time.Hour)
	if err != nil {
		return nil, nil, err
	}
	certs, err := pki.ParseChain(chain)
	if err != nil {
		t.Fatalf("chain does not parse: %v", err)
	}
	b, err := pki.Verify(pki.VerifyInput{Chain: certs, Key: key.Public(), ID: id, Now: time.Now()})
	if err != nil {
		t.Fatalf("chain refused by the agent's verification: %v", err)
	}
	return b, chain, nil
}

func writeFile(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSignWithRealCFSSL(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts cfssltest.Options
	}{
		{"http, CFSSL signs as the root", cfssltest.Options{}},
		{"https, CFSSL signs as an intermediate", cfssltest.Options{TLS: true, Intermediate: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := cfssltest.Start(t, tc.opts)
			c := newClient(t, cfsslclient.Config{URL: s.URL, RootCertFile: s.RootFile, ServerName: cfssltest.ServerName, Profile: cfssltest.ProfileWorkload})
			b, chain, err := sign(t, c)
			if err != nil {
				t.Fatal(err)
			}
			want := 2
			if tc.opts.Intermediate {
				want = 3
				if !b.Intermediates[0].Equal(s.Signer.Cert) {
					t.Fatal("the intermediate in the chain is not CFSSL's signer")
				}
			}
			if len(chain) != want {
				t.Fatalf("chain has %d certificates, want %d (leaf, signer, root)", len(chain), want)
			}
			if len(b.Roots) != 1 || !b.Roots[0].Equal(s.Root.Cert) {
				t.Fatal("chain does not end in the root of the root file")
			}
			if got := b.Leaf.NotAfter.Sub(b.Leaf.NotBefore); got != cfssltest.WorkloadExpiry {
				t.Fatalf("leaf lifetime %s, want the profile's %s", got, cfssltest.WorkloadExpiry)
			}
		})
	}
}

func TestAuthSignWithRightAndWrongKey(t *testing.T) {
	s := cfssltest.Start(t, cfssltest.Options{})
	dir := t.TempDir()
	wrongKey := strings.Repeat("ab", 16)
	keyFile := writeFile(t, dir, "key", wrongKey+"\n")
	c := newClient(t, cfsslclient.Config{URL: s.URL, RootCertFile: s.RootFile, AuthKeyFile: keyFile, Profile: cfssltest.ProfileAuth})

	_, _, err := sign(t, c)
	var apiErr *cfsslclient.APIError
	if !errors.As(err, &apiErr) || apiErr.Endpoint != "authsign" || apiErr.Message != "invalid token" {
		t.Fatalf("wrong key: err = %v, want CFSSL's invalid token from authsign", err)
	}
	for _, want := range []string{"HTTP 400", "invalid token", keyFile, "is not the auth_key of profile"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("wrong key: %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), wrongKey) || strings.Contains(err.Error(), s.AuthKeyHex) {
		t.Fatal("the error holds the key")
	}

	// The key file is read on every call: fixing it needs no restart.
	writeFile(t, dir, "key", s.AuthKeyHex+"\n")
	if _, _, err := sign(t, c); err != nil {
		t.Fatalf("right key: %v", err)
	}

	writeFile(t, dir, "key", "not hex at all")
	_, _, err = sign(t, c)
	if err == nil || !strings.Contains(err.Error(), "not a hex key") || strings.Contains(err.Error(), "not hex at all") {
		t.Fatalf("bad key file: err = %v, want a message that does not quote the file", err)
	}

	// The authenticated profile without a key, through sign.
	noKey := newClient(t, cfsslclient.Config{URL: s.URL, RootCertFile: s.RootFile, Profile: cfssltest.ProfileAuth})
	_, _, err = sign(t, noKey)
	if err == nil || !strings.Contains(err.Error(), "authentication required") || !strings.Contains(err.Error(), "set --cfssl-auth-key-file") {
		t.Fatalf("no key: err = %v", err)
	}

	writeFile(t, dir, "key", s.AuthKeyHex)
	// A profile CFSSL does not know falls back to its default profile,
	// which has no auth_key: the message says both.
	unknown := newClient(t, cfsslclient.Config{URL: s.URL, RootCertFile: s.RootFile, AuthKeyFile: keyFile, Profile: "no-such-profile"})
	_, _, err = sign(t, unknown)
	if err == nil || !strings.Contains(err.Error(), `profile "no-such-profile" has no auth_key`) || !strings.Contains(err.Error(), "does not know") {
		t.Fatalf("unknown profile: err = %v", err)
	}
}

func TestTLSToCFSSLIsVerified(t *testing.T) {
	s := cfssltest.Start(t, cfssltest.Options{TLS: true})
	other := testpki.NewRoot(t, "not the CFSSL root")
	dir := t.TempDir()
	otherFile := writeFile(t, dir, "other.pem", string(other.CertPEM))
	// The root that issued CFSSL's certificate, but the wrong name.
	tests := []struct {
		name string
		cfg  cfsslclient.Config
		want string
	}{
		{"foreign root", cfsslclient.Config{URL: s.URL, RootCertFile: otherFile, ServerName: cfssltest.ServerName},
			"TLS verification of CFSSL at " + s.URL + " failed (check that " + otherFile},
		{"wrong server name", cfsslclient.Config{URL: s.URL, RootCertFile: s.RootFile, ServerName: "cfssl.example"},
			`valid for "cfssl.example"`},
		{"http to an https server", cfsslclient.Config{URL: strings.Replace(s.URL, "https:", "http:", 1), RootCertFile: s.RootFile},
			"answered HTTP 400 with a body that is not CFSSL's JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := sign(t, newClient(t, tc.cfg))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestChainMustEndInARootOfTheRootFile(t *testing.T) {
	other := writeFile(t, t.TempDir(), "other.pem", string(testpki.NewRoot(t, "other root").CertPEM))
	for _, tc := range []struct {
		name string
		opts cfssltest.Options
		want string
	}{
		{"CFSSL's root signer is not in the file", cfssltest.Options{}, "is a root that " + other + " does not hold"},
		{"nothing in the file issued CFSSL's intermediate", cfssltest.Options{Intermediate: true}, "no certificate in " + other + " issued"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := cfssltest.Start(t, tc.opts)
			_, _, err := sign(t, newClient(t, cfsslclient.Config{URL: s.URL, RootCertFile: other}))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestCFSSLDownIsClear(t *testing.T) {
	s := cfssltest.Start(t, cfssltest.Options{})
	c := newClient(t, cfsslclient.Config{URL: s.URL, RootCertFile: s.RootFile})
	s.Stop()
	_, _, err := sign(t, c)
	if err == nil || !strings.Contains(err.Error(), "CFSSL at "+s.URL+" unreachable (check the address and that cfssl serve is running)") {
		t.Fatalf("err = %v", err)
	}
	s.Restart()
	if _, _, err := sign(t, c); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}
