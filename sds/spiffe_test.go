package sds

import (
	"bytes"
	"crypto/x509"
	"slices"
	"strings"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// bundlesSecret is ROOTCA in the SPIFFE form: cluster.local under own
// (and TrustedCAPEM, as the cache sets it), then other.example.
func bundlesSecret(own, other *testpki.CA) *cache.Secret {
	return &cache.Secret{
		Name:         cache.RootCertName,
		Kind:         cache.ValidationContext,
		TrustedCAPEM: own.CertPEM,
		Bundles: []cache.TrustBundle{
			{TrustDomain: "cluster.local", RootsPEM: own.CertPEM, Roots: []*x509.Certificate{own.Cert}},
			{TrustDomain: "other.example", RootsPEM: other.CertPEM, Roots: []*x509.Certificate{other.Cert}},
		},
		Certs:  []*x509.Certificate{own.Cert, other.Cert},
		Source: "test",
	}
}

func TestToProtoSPIFFEValidator(t *testing.T) {
	own, other := testpki.NewRoot(t, "own root"), testpki.NewRoot(t, "other root")
	msg, err := ToProto(bundlesSecret(own, other))
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.ValidateAll(); err != nil {
		t.Fatalf("ValidateAll = %v", err)
	}
	vc := msg.GetValidationContext()
	if vc.GetTrustedCa() != nil {
		t.Fatal("trusted_ca set beside the SPIFFE validator: the validator picks roots by trust domain")
	}
	cvc := vc.GetCustomValidatorConfig()
	if cvc.GetName() != "envoy.tls.cert_validator.spiffe" ||
		cvc.GetTypedConfig().GetTypeUrl() != "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig" {
		t.Fatalf("custom validator = %s %s", cvc.GetName(), cvc.GetTypedConfig().GetTypeUrl())
	}
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	if err := cvc.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.ValidateAll(); err != nil {
		t.Fatalf("SPIFFECertValidatorConfig.ValidateAll = %v", err)
	}
	var got []string
	for _, td := range cfg.GetTrustDomains() {
		got = append(got, td.GetName())
	}
	if !slices.Equal(got, []string{"cluster.local", "other.example"}) ||
		!bytes.Equal(cfg.GetTrustDomains()[0].GetTrustBundle().GetInlineBytes(), own.CertPEM) ||
		!bytes.Equal(cfg.GetTrustDomains()[1].GetTrustBundle().GetInlineBytes(), other.CertPEM) {
		t.Fatalf("trust domains = %v, want cluster.local with its root, then other.example with its", got)
	}
	// The client the tests use reads it the same way.
	roots, err := sdstest.TrustDomainRoots(msg)
	if err != nil || len(roots) != 2 || !roots["other.example"][0].Equal(other.Cert) {
		t.Fatalf("TrustDomainRoots = %v, %v", roots, err)
	}

	// The plain form is unchanged without bundles.
	plain, err := ToProto(rootSecret(own))
	if err != nil || plain.GetValidationContext().GetCustomValidatorConfig() != nil || !bytes.Equal(plain.GetValidationContext().GetTrustedCa().GetInlineBytes(), own.CertPEM) {
		t.Fatalf("plain ROOTCA = %v, %v", plain, err)
	}

	for _, bad := range []struct {
		name string
		td   cache.TrustBundle
		want string
	}{
		{"empty bundle", cache.TrustBundle{TrustDomain: "other.example"}, "empty trust bundle"},
		{"no trust domain name", cache.TrustBundle{RootsPEM: other.CertPEM}, "invalid spiffe validator config"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			sec := bundlesSecret(own, other)
			sec.Bundles = []cache.TrustBundle{bad.td}
			if _, err := ToProto(sec); err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Fatalf("ToProto = %v, want %q", err, bad.want)
			}
		})
	}
}

// TestSPIFFEValidatorOverSDS serves two identities whose ROOTCA is in the
// SPIFFE form and shows that a peer is verified with its own trust
// domain's bundle only.
func TestSPIFFEValidatorOverSDS(t *testing.T) {
	rootA, rootB := testpki.NewRoot(t, "root of cluster.local"), testpki.NewRoot(t, "root of other.example")
	a := newHarnessWith(t, harnessOptions{root: rootA})
	b := newHarnessWith(t, harnessOptions{root: rootB})
	a.publishLeaf(spiffeA)
	b.publishLeaf("spiffe://other.example/ns/b/sa/beta")
	a.store.Update([]*cache.Secret{bundlesSecret(rootA, rootB)}, nil)
	b.store.Update([]*cache.Secret{bundlesSecret(rootA, rootB)}, nil)
	idA, idB := a.identity(), b.identity() // the client validates each secret
	if err := sdstest.MTLS(a.ctx(), idA, idB); err != nil {
		t.Fatalf("MTLS a<-b: %v", err)
	}
	if err := sdstest.MTLS(a.ctx(), idB, idA); err != nil {
		t.Fatalf("MTLS b<-a: %v", err)
	}

	// other.example's root vouches for nothing in cluster.local: a leaf
	// for cluster.local signed under it is refused, though its root is
	// in the bundles.
	b.publishLeaf("spiffe://cluster.local/ns/b/sa/rogue")
	idRogue := b.identity()
	if err := sdstest.MTLS(a.ctx(), idA, idRogue); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("MTLS with a cluster.local leaf from other.example's root = %v, want refused", err)
	}
}
