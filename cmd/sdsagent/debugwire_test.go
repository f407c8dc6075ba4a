package main

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/peercred"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds"
)

// TestDebugSecretsNeverHandsTheKey checks the wiring of the debug views:
// listing order, the fields they read, and that toProto only ever sees
// the key Proto is given, never the stored one.
func TestDebugSecretsNeverHandsTheKey(t *testing.T) {
	root := testpki.NewRoot(t, "root")
	leaf := root.IssueLeaf(t, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/a/sa/b"}})
	store := cache.NewStore(clock.Real())
	store.Update([]*cache.Secret{
		{Name: cache.RootCertName, Kind: cache.ValidationContext, TrustedCAPEM: root.CertPEM, Certs: []*x509.Certificate{root.Cert}},
		{Name: cache.WorkloadCertName, Kind: cache.TLSCertificate, CertChainPEM: leaf.ChainPEM, PrivateKeyPEM: pki.PrivateKeyPEM(leaf.KeyPEM), Certs: []*x509.Certificate{leaf.Cert}},
	}, nil)
	var seen [][]byte
	toProto := func(sec *cache.Secret) (*tlsv3.Secret, error) {
		seen = append(seen, []byte(sec.PrivateKeyPEM))
		return sds.ToProto(sec)
	}
	got := debugSecrets(store, toProto)()
	if len(got) != 2 || got[0].Name != cache.WorkloadCertName || got[1].Name != cache.RootCertName {
		t.Fatalf("names = %v, want default then ROOTCA", got)
	}
	if w := got[0]; !w.Cert || !w.Workload || !w.NotAfter.Equal(leaf.Cert.NotAfter) || !bytes.Equal(w.PrivateKey, leaf.KeyPEM) {
		t.Errorf("default: cert %v workload %v not_after %v, key kept %v", w.Cert, w.Workload, w.NotAfter, bytes.Equal(w.PrivateKey, leaf.KeyPEM))
	}
	if r := got[1]; r.Cert || r.Workload || len(r.PrivateKey) != 0 {
		t.Errorf("ROOTCA: cert %v workload %v key %d bytes", r.Cert, r.Workload, len(r.PrivateKey))
	}
	for _, s := range got {
		msg, err := s.Proto([]byte(pki.Redacted))
		if err != nil || msg.GetName() != s.Name {
			t.Fatalf("%s: Proto = %v, %v", s.Name, msg.GetName(), err)
		}
	}
	if len(seen) != 2 || string(seen[0]) != pki.Redacted || len(seen[1]) != 0 {
		t.Errorf("toProto saw keys of %d, %d bytes; want the marker for default and none for ROOTCA", len(seen[0]), len(seen[1]))
	}
	if stored, _ := store.Snapshot().Get(cache.WorkloadCertName); !bytes.Equal([]byte(stored.PrivateKeyPEM), leaf.KeyPEM) {
		t.Error("the stored secret's key was changed")
	}
}

// TestDebugPeerCheckKeepsJSON checks that /debug/sds shows the peer check
// exactly as peercred.Stats marshals, and that an off check stays off.
func TestDebugPeerCheckKeepsJSON(t *testing.T) {
	if debugPeerCheck(nil) != nil {
		t.Fatal("debugPeerCheck(nil) is not nil: /debug/sds would show a check that is off")
	}
	for _, st := range []peercred.Stats{
		{AllowedUIDs: []uint32{1337}},
		{AllowedUIDs: []uint32{0, 1337}, AllowedGIDs: []uint32{5}, Refused: 3, LastRefused: &peercred.Refusal{
			Cred: peercred.Cred{PID: 42, UID: 1000, GID: 1001}, At: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC), Reason: "uid 1000 not allowed",
		}},
	} {
		want, _ := json.Marshal(st)
		got, _ := json.Marshal(debugPeerCheck(func() peercred.Stats { return st })())
		if !bytes.Equal(got, want) {
			t.Errorf("peer check JSON = %s, want %s", got, want)
		}
	}
}
