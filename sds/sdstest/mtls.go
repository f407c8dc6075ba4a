package sdstest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// Resource names of a workload identity, as Istio's agent serves them.
const (
	// CertName is the workload key and chain.
	CertName = "default"
	// RootName is the trust anchors.
	RootName = "ROOTCA"
)

// Identity is a workload identity as SDS serves it: the "default"
// TlsCertificate and the "ROOTCA" ValidationContext.
type Identity struct {
	// Cert holds the private key and chain, leaf first.
	Cert *tlsv3.Secret
	// Roots holds the trust anchors that verify peers.
	Roots *tlsv3.Secret
}

// IdentityFrom picks CertName and RootName out of secrets.
func IdentityFrom(secrets []*tlsv3.Secret) (Identity, error) {
	byName := secretsByName(secrets)
	id := Identity{Cert: byName[CertName], Roots: byName[RootName]}
	if id.Cert == nil || id.Roots == nil {
		return Identity{}, fmt.Errorf("identity: need %s and %s, got %v", CertName, RootName, names(secrets))
	}
	return id, nil
}

// Certificate returns the key and chain as a tls.Certificate.
func (id Identity) Certificate() (tls.Certificate, error) {
	tc := id.Cert.GetTlsCertificate()
	if tc == nil {
		return tls.Certificate{}, fmt.Errorf("identity: secret %q is not a tls certificate", id.Cert.GetName())
	}
	cert, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		// X509KeyPair's errors describe the PEM, never the key bytes.
		return tls.Certificate{}, fmt.Errorf("identity: key pair: %w", err)
	}
	return cert, nil
}

// RootPool returns the trust anchors of a ValidationContext in the plain
// trusted_ca form as a pool. For the SPIFFE validator form see
// TrustDomainRoots.
func (id Identity) RootPool() (*x509.CertPool, error) {
	vc := id.Roots.GetValidationContext()
	if vc == nil {
		return nil, fmt.Errorf("identity: secret %q is not a validation context", id.Roots.GetName())
	}
	certs, err := parseCerts(vc.GetTrustedCa().GetInlineBytes())
	if err != nil {
		return nil, fmt.Errorf("identity: trusted ca: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// SPIFFEValidatorName is the name of Envoy's SPIFFE certificate validator.
// It is spelled here, not taken from sds.SPIFFEValidatorName, on purpose:
// sdstest plays Envoy, so it checks what sds sends against Envoy's name
// (and sds's own tests import sdstest, so it cannot import sds).
const SPIFFEValidatorName = "envoy.tls.cert_validator.spiffe"

// SPIFFEValidatorConfig returns the validated SPIFFECertValidatorConfig of
// a ValidationContext served for Envoy's SPIFFE certificate validator, and
// false for one in the plain trusted_ca form.
func SPIFFEValidatorConfig(sec *tlsv3.Secret) (*tlsv3.SPIFFECertValidatorConfig, bool, error) {
	cvc := sec.GetValidationContext().GetCustomValidatorConfig()
	if cvc == nil {
		return nil, false, nil
	}
	if cvc.GetName() != SPIFFEValidatorName {
		return nil, true, fmt.Errorf("secret %q: custom validator %q, want %s", sec.GetName(), cvc.GetName(), SPIFFEValidatorName)
	}
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	if err := cvc.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		return nil, true, fmt.Errorf("secret %q: unpack spiffe validator config: %w", sec.GetName(), err)
	}
	if err := cfg.ValidateAll(); err != nil {
		return nil, true, fmt.Errorf("secret %q: invalid spiffe validator config: %w", sec.GetName(), err)
	}
	return cfg, true, nil
}

// TrustDomainRoots returns the roots of each trust domain of a
// ValidationContext in the SPIFFE validator form, by trust domain name.
// Every bundle must be inline PEM certificates and every name unique.
func TrustDomainRoots(sec *tlsv3.Secret) (map[string][]*x509.Certificate, error) {
	cfg, ok, err := SPIFFEValidatorConfig(sec)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("secret %q: no spiffe validator config", sec.GetName())
	}
	out := map[string][]*x509.Certificate{}
	for _, td := range cfg.GetTrustDomains() {
		if _, dup := out[td.GetName()]; dup {
			return nil, fmt.Errorf("secret %q: trust domain %q twice", sec.GetName(), td.GetName())
		}
		certs, err := parseCerts(td.GetTrustBundle().GetInlineBytes())
		if err != nil {
			return nil, fmt.Errorf("secret %q: trust domain %q: %w", sec.GetName(), td.GetName(), err)
		}
		out[td.GetName()] = certs
	}
	return out, nil
}

// peerRoots returns what picks the roots that verify a peer's leaf, as
// Envoy does: the trusted CAs, or, with the SPIFFE validator, the bundle
// of the trust domain of the leaf's SPIFFE ID (none: refused).
func (id Identity) peerRoots() (func(*x509.Certificate) (*x509.CertPool, error), error) {
	if _, spiffe, err := SPIFFEValidatorConfig(id.Roots); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	} else if !spiffe {
		pool, err := id.RootPool()
		if err != nil {
			return nil, err
		}
		return func(*x509.Certificate) (*x509.CertPool, error) { return pool, nil }, nil
	}
	bundles, err := TrustDomainRoots(id.Roots)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	return func(leaf *x509.Certificate) (*x509.CertPool, error) {
		sid, err := SPIFFEID(leaf)
		if err != nil {
			return nil, err
		}
		td := leaf.URIs[0].Host
		roots, ok := bundles[td]
		if !ok {
			return nil, fmt.Errorf("no trust bundle for the trust domain of %s", sid)
		}
		pool := x509.NewCertPool()
		for _, c := range roots {
			pool.AddCert(c)
		}
		return pool, nil
	}, nil
}

// SPIFFEID returns the SPIFFE ID of the identity's leaf certificate.
func (id Identity) SPIFFEID() (string, error) {
	cert, err := id.Certificate()
	if err != nil {
		return "", err
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return "", fmt.Errorf("identity: parse leaf: %w", err)
	}
	return SPIFFEID(leaf)
}

// ServerConfig returns a TLS 1.3 server config that presents the identity,
// requires a client certificate that chains to the identity's roots (with
// the SPIFFE validator form, those of the client's trust domain) and,
// unless peerID is empty, carries exactly that SPIFFE ID.
func (id Identity) ServerConfig(peerID string) (*tls.Config, error) {
	cert, roots, err := id.parts()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{cert},
		ClientAuth:       tls.RequireAnyClientCert,
		VerifyConnection: verifyPeer(roots, x509.ExtKeyUsageClientAuth, peerID),
	}, nil
}

// ClientConfig returns a TLS 1.3 client config that presents the identity
// and accepts a server whose certificate chains to the identity's roots
// (with the SPIFFE validator form, those of the server's trust domain)
// and, unless peerID is empty, carries exactly that SPIFFE ID. Server
// names are not checked: SPIFFE identities live in URI SANs.
func (id Identity) ClientConfig(peerID string) (*tls.Config, error) {
	cert, roots, err := id.parts()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// Verification is done by VerifyConnection, against the SPIFFE ID
		// instead of a host name.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection:   verifyPeer(roots, x509.ExtKeyUsageServerAuth, peerID),
	}, nil
}

func (id Identity) parts() (tls.Certificate, func(*x509.Certificate) (*x509.CertPool, error), error) {
	cert, err := id.Certificate()
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	roots, err := id.peerRoots()
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return cert, roots, nil
}

// verifyPeer verifies the peer's chain against the roots for it, for
// usage, and checks its SPIFFE ID.
func verifyPeer(rootsFor func(*x509.Certificate) (*x509.CertPool, error), usage x509.ExtKeyUsage, peerID string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("peer sent no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		leaf := cs.PeerCertificates[0]
		roots, err := rootsFor(leaf)
		if err != nil {
			return fmt.Errorf("verify peer: %w", err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return fmt.Errorf("verify peer: %w", err)
		}
		got, err := SPIFFEID(leaf)
		if err != nil {
			return fmt.Errorf("verify peer: %w", err)
		}
		if peerID != "" && got != peerID {
			return fmt.Errorf("verify peer: spiffe id %s, want %s", got, peerID)
		}
		return nil
	}
}

// SPIFFEID returns the certificate's SPIFFE ID: its only URI SAN, which
// must use the spiffe scheme.
func SPIFFEID(cert *x509.Certificate) (string, error) {
	if len(cert.URIs) != 1 || cert.URIs[0].Scheme != "spiffe" {
		return "", fmt.Errorf("certificate %s: want exactly one spiffe:// URI SAN, got %v", cert.Subject, cert.URIs)
	}
	return cert.URIs[0].String(), nil
}

// MTLS runs a TLS 1.3 handshake over an in-memory connection between a
// server presenting server and a client presenting client, each requiring
// the other's certificate, verifying it against its own roots and
// expecting the other's SPIFFE ID. It returns nil only if both sides
// completed the handshake and saw the expected peer.
func MTLS(ctx context.Context, server, client Identity) error {
	serverID, err := server.SPIFFEID()
	if err != nil {
		return fmt.Errorf("mtls: server: %w", err)
	}
	clientID, err := client.SPIFFEID()
	if err != nil {
		return fmt.Errorf("mtls: client: %w", err)
	}
	serverCfg, err := server.ServerConfig(clientID)
	if err != nil {
		return fmt.Errorf("mtls: server: %w", err)
	}
	clientCfg, err := client.ClientConfig(serverID)
	if err != nil {
		return fmt.Errorf("mtls: client: %w", err)
	}

	// Over a synchronous pipe each side must keep reading while the other
	// writes (tickets, alerts), so both run a handshake and then one small
	// application-data round trip, which also proves the keys work.
	sc, cc := net.Pipe()
	defer func() {
		_ = sc.Close()
		_ = cc.Close()
	}()
	stop := context.AfterFunc(ctx, func() {
		_ = sc.Close()
		_ = cc.Close()
	})
	defer stop()
	srv, cli := tls.Server(sc, serverCfg), tls.Client(cc, clientCfg)
	serverDone := make(chan error, 1)
	go func() {
		err := roundTrip(ctx, srv, "ping\n", "pong\n", true)
		if err != nil {
			_ = sc.Close()
		}
		serverDone <- err
	}()
	clientErr := roundTrip(ctx, cli, "pong\n", "ping\n", false)
	if clientErr != nil {
		_ = cc.Close()
	}
	serverErr := <-serverDone
	if clientErr != nil || serverErr != nil {
		return fmt.Errorf("mtls: %w", errors.Join(prefix("client", clientErr), prefix("server", serverErr), ctx.Err()))
	}

	check := func(side string, cs tls.ConnectionState, want string) error {
		if cs.Version != tls.VersionTLS13 {
			return fmt.Errorf("mtls: %s negotiated version %#x, want TLS 1.3", side, cs.Version)
		}
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("mtls: %s saw no peer certificate", side)
		}
		got, err := SPIFFEID(cs.PeerCertificates[0])
		if err != nil {
			return fmt.Errorf("mtls: %s: %w", side, err)
		}
		if got != want {
			return fmt.Errorf("mtls: %s saw peer %s, want %s", side, got, want)
		}
		return nil
	}
	return errors.Join(
		check("server", srv.ConnectionState(), clientID),
		check("client", cli.ConnectionState(), serverID),
	)
}

// roundTrip completes the handshake on c, then either writes send and
// reads want (writeFirst) or reads want and writes send.
func roundTrip(ctx context.Context, c *tls.Conn, send, want string, writeFirst bool) error {
	if err := c.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	write := func() error {
		if _, err := io.WriteString(c, send); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		return nil
	}
	read := func() error {
		buf := make([]byte, len(want))
		if _, err := io.ReadFull(c, buf); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if string(buf) != want {
			return fmt.Errorf("read %q, want %q", buf, want)
		}
		return nil
	}
	if writeFirst {
		if err := write(); err != nil {
			return err
		}
		return read()
	}
	if err := read(); err != nil {
		return err
	}
	return write()
}

func prefix(side string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", side, err)
}

func parseCerts(pemBytes []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, pemBytes = pem.Decode(pemBytes)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificates found")
	}
	return certs, nil
}
