package pki_test

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// TestIsSelfSigned checks the one self-signed test the dev CA, the CFSSL
// client and Verify share: a root is, an intermediate is not, and neither
// is a v3 certificate signed by its own key that is not a CA, nor one
// signed by its own key under another issuer name.
func TestIsSelfSigned(t *testing.T) {
	root := testpki.NewRoot(t, "root")
	inter := root.NewIntermediate(t, "intermediate")
	key := testpki.NewKey(t)
	self := func(subject, issuer string, isCA bool) *x509.Certificate {
		t.Helper()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: subject},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			BasicConstraintsValid: true, IsCA: isCA, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		}
		parent := *tmpl
		parent.Subject = pkix.Name{CommonName: issuer}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, &parent, key.Public(), key)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name string
		cert *x509.Certificate
		want bool
	}{
		{"root", root.Cert, true},
		{"self-signed CA", self("ca", "ca", true), true},
		{"intermediate", inter.Cert, false},
		{"self-signed non-CA", self("leaf", "leaf", false), false},
		{"own key, other issuer name", self("ca", "someone else", true), false},
	} {
		if got := pki.IsSelfSigned(tc.cert); got != tc.want {
			t.Errorf("%s: IsSelfSigned = %v, want %v", tc.name, got, tc.want)
		}
	}
}
