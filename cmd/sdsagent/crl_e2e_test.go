package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// servedCRLs parses the crl of a served ValidationContext.
func servedCRLs(t *testing.T, sec *tlsv3.Secret) []*x509.RevocationList {
	t.Helper()
	raw := sec.GetValidationContext().GetCrl().GetInlineBytes()
	if len(raw) == 0 {
		return nil
	}
	crls, err := pki.ParseCRLs(raw)
	if err != nil {
		t.Fatalf("served crl: %v", err)
	}
	return crls
}

// lists reports whether one of crls lists serial.
func lists(crls []*x509.RevocationList, c *x509.Certificate) bool {
	for _, crl := range crls {
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(c.SerialNumber) == 0 {
				return true
			}
		}
	}
	return false
}

// crlVerifier returns a VerifyPeerCertificate that refuses a peer whose
// leaf is listed in the CRL of its issuer among those served in roots:
// what Envoy does with the crl of its validation context. Go's
// crypto/x509 does not check CRLs itself. The chain itself is verified
// by the identity's VerifyConnection.
func crlVerifier(roots *tlsv3.Secret) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("crl check: no peer certificate")
		}
		var certs []*x509.Certificate
		for _, r := range raw {
			c, err := x509.ParseCertificate(r)
			if err != nil {
				return fmt.Errorf("crl check: %w", err)
			}
			certs = append(certs, c)
		}
		trusted, err := pki.ParseCertificates(roots.GetValidationContext().GetTrustedCa().GetInlineBytes())
		if err != nil {
			return fmt.Errorf("crl check: %w", err)
		}
		leaf := certs[0]
		var issuer *x509.Certificate
		for _, c := range append(certs[1:], trusted...) {
			if bytes.Equal(leaf.RawIssuer, c.RawSubject) && leaf.CheckSignatureFrom(c) == nil {
				issuer = c
				break
			}
		}
		if issuer == nil {
			return errors.New("crl check: issuer of the peer's leaf not found")
		}
		rest := roots.GetValidationContext().GetCrl().GetInlineBytes()
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			crl, err := x509.ParseRevocationList(block.Bytes)
			if err != nil {
				return fmt.Errorf("crl check: %w", err)
			}
			if !bytes.Equal(crl.RawIssuer, issuer.RawSubject) || crl.CheckSignatureFrom(issuer) != nil {
				continue
			}
			for _, e := range crl.RevokedCertificateEntries {
				if e.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
					return fmt.Errorf("crl check: peer certificate %x is revoked", leaf.SerialNumber)
				}
			}
			return nil
		}
		return fmt.Errorf("crl check: no CRL of the peer's issuer %s", issuer.Subject)
	}
}

// mtlsWithCRL runs a real TLS 1.3 handshake and one round trip between
// server and client, each verifying the other with its own ROOTCA, CRL
// included.
func mtlsWithCRL(server, client sdstest.Identity) error {
	serverID, err := server.SPIFFEID()
	if err != nil {
		return err
	}
	clientID, err := client.SPIFFEID()
	if err != nil {
		return err
	}
	scfg, err := server.ServerConfig(clientID)
	if err != nil {
		return err
	}
	scfg.VerifyPeerCertificate = crlVerifier(server.Roots)
	ccfg, err := client.ClientConfig(serverID)
	if err != nil {
		return err
	}
	ccfg.VerifyPeerCertificate = crlVerifier(client.Roots)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	sc, cc := net.Pipe()
	defer sc.Close()
	defer cc.Close()
	stop := context.AfterFunc(ctx, func() { sc.Close(); cc.Close() })
	defer stop()
	srv, cli := tls.Server(sc, scfg), tls.Client(cc, ccfg)
	done := make(chan error, 1)
	go func() {
		err := srv.HandshakeContext(ctx)
		if err == nil {
			_, err = srv.Write([]byte("ok\n"))
		}
		if err != nil {
			sc.Close()
		}
		done <- err
	}()
	cerr := cli.HandshakeContext(ctx)
	if cerr == nil {
		buf := make([]byte, 3)
		_, cerr = cli.Read(buf)
	}
	if cerr != nil {
		cc.Close()
	}
	serr := <-done
	if cerr != nil || serr != nil {
		return fmt.Errorf("client: %v; server: %v", cerr, serr)
	}
	return nil
}

// TestRevocationEndToEnd: with a plugged-in intermediate CA, `ca
// revoke` publishes a CRL the agents serve in ROOTCA; a peer whose
// certificate is revoked is refused by a verifier honouring the served
// CRL while a non-revoked one handshakes; the revoked agent renews at
// once; OpenSSL agrees on what is served.
func TestRevocationEndToEnd(t *testing.T) {
	const td = "mesh-a.example"
	p := newEnterprisePKI(t, td)
	dir := p.meshDir[td]
	ca := p.startMeshCA(t, td)
	ca.logs.waitLine(t, "crl published")
	crlPath := filepath.Join(dir, "crl.pem")
	base := tempDir(t)
	agentA := startAgent(t, ca.agentArgs(filepath.Join(base, "a.sock"), "--trust-domain", td, "--service-account", "a", "--crl-file", crlPath))
	agentB := startAgent(t, ca.agentArgs(filepath.Join(base, "b.sock"), "--trust-domain", td, "--service-account", "b", "--crl-file", crlPath))
	wa, wb := watch(t, agentA.socket, "default", "ROOTCA"), watch(t, agentB.socket, "default", "ROOTCA")
	for _, w := range []*sdsWatch{wa, wb} {
		w.until("the CA's CRL in ROOTCA", func() bool { return len(servedCRLs(t, w.cur["ROOTCA"])) == 1 })
	}
	rootca := wa.cur["ROOTCA"]
	if err := rootca.ValidateAll(); err != nil {
		t.Fatalf("ROOTCA with a crl: %v", err)
	}
	if !rootca.GetValidationContext().GetOnlyVerifyLeafCertCrl() {
		t.Errorf("only_verify_leaf_cert_crl is false, want true: the root published no CRL for the intermediate")
	}
	inter := readCertFile(t, filepath.Join(dir, "ca-cert.pem"))
	if err := servedCRLs(t, rootca)[0].CheckSignatureFrom(inter); err != nil {
		t.Fatalf("served CRL not signed by the intermediate: %v", err)
	}

	oldB, oldChainB := wb.identity(), wb.chain()
	if err := mtlsWithCRL(wa.identity(), oldB); err != nil {
		t.Fatalf("before revocation: %v", err)
	}

	runOK(t, "ca", "revoke", "--dir", dir, "--serial", oldChainB[0].SerialNumber.Text(16), "--reason", "keyCompromise")
	wa.until("B's serial in A's ROOTCA crl", func() bool { return lists(servedCRLs(t, wa.cur["ROOTCA"]), oldChainB[0]) })

	// A honouring its CRL refuses B's revoked certificate, as server and
	// as client.
	if err := mtlsWithCRL(wa.identity(), oldB); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked client B: handshake error %v, want refused as revoked", err)
	}
	if err := mtlsWithCRL(oldB, wa.identity()); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked server B: handshake error %v, want refused as revoked", err)
	}

	// B sees itself in the CRL and renews at once; its new certificate
	// handshakes with A, each checking the other against its CRL.
	line := agentB.logs.waitLine(t, "workload certificate is revoked; renewing it at once")
	if line["serial"] != fmt.Sprintf("%x", oldChainB[0].SerialNumber) {
		t.Errorf("revoked log = %v, want B's old serial", line)
	}
	wb.until("a new leaf for B", func() bool { return wb.chain()[0].SerialNumber.Cmp(oldChainB[0].SerialNumber) != 0 })
	wb.until("the new CRL in B's ROOTCA", func() bool { return lists(servedCRLs(t, wb.cur["ROOTCA"]), oldChainB[0]) })
	if err := mtlsWithCRL(wa.identity(), wb.identity()); err != nil {
		t.Fatalf("renewed B with A: %v", err)
	}
	if err := mtlsWithCRL(wb.identity(), wa.identity()); err != nil {
		t.Fatalf("A with renewed B: %v", err)
	}

	t.Run("openssl", func(t *testing.T) {
		openssl, err := exec.LookPath("openssl")
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("openssl not installed; CI must have it (apt-get install openssl)")
			}
			t.Skip("openssl not installed; apt-get install openssl")
		}
		work := tempDir(t)
		write := func(name string, data []byte) string {
			path := filepath.Join(work, name)
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			return path
		}
		ossl := func(args ...string) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			out, err := exec.CommandContext(ctx, openssl, args...).CombinedOutput()
			return string(out), err
		}
		vc := wa.cur["ROOTCA"].GetValidationContext()
		root := write("root.pem", vc.GetTrustedCa().GetInlineBytes())
		crl := write("crl.pem", vc.GetCrl().GetInlineBytes())
		inters := write("inter.pem", pki.EncodeCertificates(oldChainB[1:]))
		revoked := write("revoked.pem", pki.EncodeCertificates(oldChainB[:1]))
		renewed := write("renewed.pem", pki.EncodeCertificates(wb.chain()[:1]))

		out, err := ossl("crl", "-noout", "-text", "-in", crl)
		if err != nil {
			t.Fatalf("openssl crl: %v\n%s", err, out)
		}
		if !strings.Contains(out, "X509v3 CRL Number") || !strings.Contains(out, fmt.Sprintf("%X", oldChainB[0].SerialNumber)) ||
			!strings.Contains(out, "Key Compromise") || !strings.Contains(out, "Next Update") {
			t.Fatalf("openssl crl -text misses the number, B's serial, the reason or Next Update:\n%s", out)
		}
		out, err = ossl("verify", "-crl_check", "-CAfile", root, "-untrusted", inters, "-CRLfile", crl, revoked)
		if err == nil || !strings.Contains(out, "certificate revoked") {
			t.Fatalf("openssl verify -crl_check of the revoked leaf: %v\n%s", err, out)
		}
		out, err = ossl("verify", "-crl_check", "-CAfile", root, "-untrusted", inters, "-CRLfile", crl, renewed)
		if err != nil || !strings.Contains(out, "OK") {
			t.Fatalf("openssl verify -crl_check of the renewed leaf: %v\n%s", err, out)
		}
	})
}

// TestRevocationSPIFFEValidatorForm: with --spiffe-validator and the
// self-signed sdsagent ca, whose CRL covers every CA of the chain, the
// CRL sits in the own trust domain's bundle, where Envoy's SPIFFE
// validator reads it; the crl field stays empty; `sdsagent secrets`
// still lists the root.
func TestRevocationSPIFFEValidatorForm(t *testing.T) {
	ca := startCA(t, "127.0.0.1:0")
	ca.logs.waitLine(t, "crl published")
	a := startAgent(t, ca.agentArgs(filepath.Join(tempDir(t), "a.sock"), "--spiffe-validator", "--crl-file", filepath.Join(ca.dir, "crl.pem")))
	w := watch(t, a.socket, "default", "ROOTCA")
	crlPEM, err := os.ReadFile(filepath.Join(ca.dir, "crl.pem"))
	if err != nil {
		t.Fatal(err)
	}
	w.until("the CRL in the own bundle", func() bool {
		cfg, ok, err := sdstest.SPIFFEValidatorConfig(w.cur["ROOTCA"])
		return err == nil && ok && bytes.HasSuffix(cfg.GetTrustDomains()[0].GetTrustBundle().GetInlineBytes(), crlPEM)
	})
	if err := w.cur["ROOTCA"].ValidateAll(); err != nil {
		t.Fatal(err)
	}
	if w.cur["ROOTCA"].GetValidationContext().GetCrl() != nil {
		t.Fatal("crl field set in the SPIFFE form; Envoy's SPIFFE validator ignores it")
	}
	mtls(t, "with itself", w.identity(), w.identity())
	code, out := runCmd(t, "secrets", "--http-addr", a.http)
	if code != 0 || !strings.Contains(out, "ROOTCA") {
		t.Fatalf("sdsagent secrets exited %d:\n%s", code, out)
	}
}
