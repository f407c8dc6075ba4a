package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

func testCAAndCRL(t *testing.T) (certPEM, crlPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, NotBefore: now, NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	crlDER, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(3), ThisUpdate: now, NextUpdate: now.Add(time.Hour)}, ca, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: CRLBlockType, Bytes: crlDER})
}

func TestParseCRLs(t *testing.T) {
	certPEM, crlPEM := testCAAndCRL(t)
	two := append(append([]byte(nil), crlPEM...), crlPEM...)
	crls, err := ParseCRLs(two)
	if err != nil || len(crls) != 2 || crls[0].Number.Int64() != 3 {
		t.Fatalf("ParseCRLs(two) = %d CRLs, %v", len(crls), err)
	}
	if !bytes.Equal(EncodeCRLs(crls), two) {
		t.Fatal("EncodeCRLs does not give the PEM back")
	}
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "no CRLs found"},
		{"garbage", []byte("not pem"), "no valid PEM block"},
		{"half", crlPEM[:len(crlPEM)/2], "no valid PEM block"},
		{"truncated second", append(append([]byte(nil), crlPEM...), crlPEM[:40]...), "bytes after CRL 1"},
		{"a certificate", certPEM, `type "CERTIFICATE"`},
		{"bad DER", pem.EncodeToMemory(&pem.Block{Type: CRLBlockType, Bytes: []byte{1, 2, 3}}), "CRL 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseCRLs(tt.in); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseCRLs: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestWithoutCRLs(t *testing.T) {
	certPEM, crlPEM := testCAAndCRL(t)
	if got := WithoutCRLs(certPEM); !bytes.Equal(got, certPEM) {
		t.Fatal("changed a bundle without CRLs")
	}
	got := WithoutCRLs(append(append([]byte(nil), certPEM...), crlPEM...))
	if certs, err := ParseCertificates(got); err != nil || len(certs) != 1 {
		t.Fatalf("roots of a bundle with a CRL: %d, %v", len(certs), err)
	}
}
