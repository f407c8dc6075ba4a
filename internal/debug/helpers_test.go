package debug

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// Names of the file-backed secrets the fixture adds next to default and
// ROOTCA, to check the order of the rest.
const (
	fileCertName = "file-cert:/etc/certs/cert.pem~/etc/certs/key.pem"
	fileRootName = "file-root:/etc/certs/ca.pem"
)

// fixture is a store filled with secrets made from real certificates.
type fixture struct {
	store *cache.Store
	// chainPEM is default's chain: leaf then intermediate.
	chainPEM []byte
	// rootsPEM is ROOTCA's trusted CAs: two roots.
	rootsPEM []byte
	// keys are the private keys of every TLS certificate in the store.
	keys [][]byte
}

// newFixture publishes default, ROOTCA and two file-backed secrets, in an
// order that is not the listing order.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	root := testpki.NewRoot(t, "root A")
	other := testpki.NewRoot(t, "root B")
	inter := root.NewIntermediate(t, "intermediate")
	leaf := inter.IssueLeaf(t, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/default/sa/foo"}})
	fileLeaf := root.IssueLeaf(t, testpki.LeafOptions{DNSNames: []string{"files.example"}})
	rootsPEM := append(append([]byte{}, root.CertPEM...), other.CertPEM...)

	store := cache.NewStore(clock.Real())
	store.Update([]*cache.Secret{
		{Name: fileRootName, Kind: cache.ValidationContext, TrustedCAPEM: other.CertPEM, Certs: []*x509.Certificate{other.Cert}, Source: "/etc/certs/ca.pem"},
		{Name: cache.RootCertName, Kind: cache.ValidationContext, TrustedCAPEM: rootsPEM, Certs: []*x509.Certificate{root.Cert, other.Cert}, Source: "ca"},
		{Name: fileCertName, Kind: cache.TLSCertificate, CertChainPEM: fileLeaf.ChainPEM, PrivateKeyPEM: pki.PrivateKeyPEM(fileLeaf.KeyPEM), Certs: []*x509.Certificate{fileLeaf.Cert}, Source: "/etc/certs/cert.pem"},
		{Name: cache.WorkloadCertName, Kind: cache.TLSCertificate, CertChainPEM: leaf.ChainPEM, PrivateKeyPEM: pki.PrivateKeyPEM(leaf.KeyPEM), Certs: []*x509.Certificate{leaf.Cert, inter.Cert}, Source: "ca"},
	}, nil)
	return &fixture{store: store, chainPEM: leaf.ChainPEM, rootsPEM: rootsPEM, keys: [][]byte{leaf.KeyPEM, fileLeaf.KeyPEM}}
}

// forbidden returns what must never appear in a debug body: each key's
// PEM, its base64 (how protojson shows bytes), the base64 of its DER, and
// the PEM header.
func (f *fixture) forbidden(t *testing.T) [][]byte {
	t.Helper()
	out := [][]byte{[]byte("PRIVATE KEY")}
	for _, k := range f.keys {
		block, _ := pem.Decode(k)
		if block == nil {
			t.Fatal("fixture key is not PEM")
		}
		out = append(out, k,
			[]byte(base64.StdEncoding.EncodeToString(k)),
			[]byte(base64.StdEncoding.EncodeToString(block.Bytes)),
			// A line of the PEM body, in case a key were re-wrapped.
			bytes.SplitN(k, []byte("\n"), 3)[1],
		)
	}
	return out
}

// assertNoKey fails if body holds anything forbidden.
func (f *fixture) assertNoKey(t *testing.T, what string, body []byte) {
	t.Helper()
	for i, s := range f.forbidden(t) {
		if bytes.Contains(body, s) {
			// Say which pattern, never print it.
			t.Errorf("%s: body contains private key material (pattern %d of forbidden)", what, i)
		}
	}
}

// fakeToProto builds the Envoy Secret the way sds.ToProto does.
func fakeToProto(sec *cache.Secret) (*tlsv3.Secret, error) {
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	msg := &tlsv3.Secret{Name: sec.Name}
	switch sec.Kind {
	case cache.TLSCertificate:
		msg.Type = &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(sec.CertChainPEM),
			PrivateKey:       inline(sec.PrivateKeyPEM),
		}}
	case cache.ValidationContext:
		msg.Type = &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(sec.TrustedCAPEM),
		}}
	default:
		return nil, errors.New("convert secret: unsupported kind")
	}
	return msg, nil
}

// secretsOf lists store's secrets for Config.Secrets the way
// cmd/sdsagent wires them, each converted by toProto from a copy whose
// private key is the key Proto is given.
func secretsOf(store *cache.Store, toProto func(*cache.Secret) (*tlsv3.Secret, error)) Secrets {
	return func() []Secret {
		snap := store.Snapshot()
		var out []Secret
		for _, name := range snap.Names() {
			sec, _ := snap.Get(name)
			out = append(out, Secret{
				Name: sec.Name, Cert: sec.Kind == cache.TLSCertificate && len(sec.Certs) > 0, NotAfter: sec.NotAfter(),
				Workload: sec.Name == cache.WorkloadCertName, UpdatedAt: sec.UpdatedAt, PrivateKey: []byte(sec.PrivateKeyPEM),
				Proto: func(key []byte) (*tlsv3.Secret, error) {
					cp := *sec
					if len(cp.PrivateKeyPEM) > 0 {
						cp.PrivateKeyPEM = pki.PrivateKeyPEM(key)
					}
					return toProto(&cp)
				},
			})
		}
		return out
	}
}

// fakeVersions is what sds.Server.Versions would return for the fixture.
func fakeVersions() map[string]string {
	return map[string]string{cache.WorkloadCertName: "v3", cache.RootCertName: "v2"}
}

// newServer returns a Server over f with fake SDS sources.
func newServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Ready == nil {
		cfg.Ready = func() error { return nil }
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serve runs s on lis until the test ends and returns its base URL.
func serve(t *testing.T, s *Server, lis net.Listener) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
	return "http://" + lis.Addr().String()
}

// serveLoopback runs s on a new 127.0.0.1 listener and returns its base
// URL.
func serveLoopback(t *testing.T, s *Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, s, lis)
}

// newClient returns an HTTP client whose connections close with the test.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// get fetches url and returns the status, body and content type.
func get(t *testing.T, c *http.Client, url string) (int, []byte, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body, resp.Header.Get("Content-Type")
}
