package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/debug"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds"
)

func TestSecretsCommandShowsExpired(t *testing.T) {
	root := testpki.NewRoot(t, "root")
	leaf := root.IssueLeaf(t, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/default/sa/foo"},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	store := cache.NewStore(clock.Real())
	store.Update([]*cache.Secret{
		{Name: cache.WorkloadCertName, Kind: cache.TLSCertificate, CertChainPEM: leaf.ChainPEM, PrivateKeyPEM: pki.PrivateKeyPEM(leaf.KeyPEM), Certs: []*x509.Certificate{leaf.Cert}},
		{Name: cache.RootCertName, Kind: cache.ValidationContext, TrustedCAPEM: root.CertPEM, Certs: []*x509.Certificate{root.Cert}},
	}, nil)
	ready := func() error {
		return errors.New("workload certificate expired at 2026-12-01T18:00:00Z (1h0m0s ago); last renewal error: CA at istiod:15012 is unreachable")
	}
	srv, err := debug.New(debug.Config{Addr: "127.0.0.1:0", Ready: ready, Secrets: debugSecrets(store, sds.ToProto)})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveDebug(t, srv)
	noEnv := func(string) string { return "" }

	var out, errOut bytes.Buffer
	if err := runSecrets(context.Background(), []string{"--http-addr", addr}, noEnv, &out, &errOut); err != nil {
		t.Fatalf("sdsagent secrets: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n")[1:] {
		f := strings.Fields(line)
		want := "ACTIVE"
		if f[0] == cache.WorkloadCertName {
			want = "EXPIRED"
		}
		if !strings.Contains(line, " "+want+" ") {
			t.Errorf("row %q: want status %s", line, want)
		}
	}

	out.Reset()
	if err := runSecrets(context.Background(), []string{"--http-addr", addr, "-o", "json"}, noEnv, &out, &errOut); err != nil {
		t.Fatalf("sdsagent secrets -o json: %v", err)
	}
	if !strings.Contains(out.String(), `"EXPIRED since `) || !strings.Contains(out.String(), "istiod:15012 is unreachable") {
		t.Fatalf("json has no EXPIRED error state with the reason:\n%s", out.String())
	}
}
