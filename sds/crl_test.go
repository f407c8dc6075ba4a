package sds

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

func testCRL(t *testing.T, issuer *testpki.CA) []byte {
	t.Helper()
	now := time.Now()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: now, NextUpdate: now.Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: big.NewInt(42), RevocationTime: now}},
	}, issuer.Cert, issuer.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

func TestToProtoServesCRLs(t *testing.T) {
	own, other := testpki.NewRoot(t, "own"), testpki.NewRoot(t, "other")
	crl := testCRL(t, own)

	t.Run("trusted_ca form: the crl field", func(t *testing.T) {
		for _, leafOnly := range []bool{false, true} {
			msg, err := ToProto(&cache.Secret{Name: cache.RootCertName, Kind: cache.ValidationContext,
				TrustedCAPEM: own.CertPEM, CRLPEM: crl, OnlyVerifyLeafCRL: leafOnly, Certs: []*x509.Certificate{own.Cert}})
			if err != nil {
				t.Fatal(err) // ToProto runs ValidateAll
			}
			vc := msg.GetValidationContext()
			if !bytes.Equal(vc.GetCrl().GetInlineBytes(), crl) || vc.GetOnlyVerifyLeafCertCrl() != leafOnly || !bytes.Equal(vc.GetTrustedCa().GetInlineBytes(), own.CertPEM) {
				t.Fatalf("validation context = %v, want trusted_ca, the crl and only_verify_leaf_cert_crl %v", vc, leafOnly)
			}
		}
		msg, err := ToProto(&cache.Secret{Name: cache.RootCertName, Kind: cache.ValidationContext, TrustedCAPEM: own.CertPEM})
		if err != nil || msg.GetValidationContext().GetCrl() != nil {
			t.Fatalf("without CRLs: crl %v, err %v; want none", msg.GetValidationContext().GetCrl(), err)
		}
	})
	t.Run("SPIFFE form: inside the own bundle", func(t *testing.T) {
		sec := bundlesSecret(own, other)
		sec.Bundles[0].CRLPEM = crl
		msg, err := ToProto(sec)
		if err != nil {
			t.Fatal(err)
		}
		cfg, ok, err := sdstest.SPIFFEValidatorConfig(msg)
		if err != nil || !ok {
			t.Fatalf("not the SPIFFE form: %v", err)
		}
		got := cfg.GetTrustDomains()[0].GetTrustBundle().GetInlineBytes()
		if !bytes.Equal(got, append(append([]byte(nil), own.CertPEM...), crl...)) {
			t.Fatalf("own trust bundle = %q, want its roots followed by the CRL", got)
		}
		if b := cfg.GetTrustDomains()[1].GetTrustBundle().GetInlineBytes(); !bytes.Equal(b, other.CertPEM) {
			t.Fatalf("other trust bundle = %q, want its roots alone", b)
		}
		if msg.GetValidationContext().GetCrl() != nil {
			t.Fatal("crl field set in the SPIFFE form, which Envoy's SPIFFE validator ignores")
		}
	})
}
