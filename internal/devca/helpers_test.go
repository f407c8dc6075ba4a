package devca_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/sdsagent/sdsagent/internal/devca"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait in these tests; reaching it is a failure.
const waitTimeout = 10 * time.Second

const clusterID = "test-cluster"

// newCA creates a CA in a fresh directory unless cfg.Dir is set.
func newCA(t *testing.T, cfg devca.Config) *devca.CA {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(t.TempDir(), "ca")
	}
	ca, err := devca.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return ca
}

// serve runs ca.Serve on a real 127.0.0.1:0 listener until the test ends,
// and fails the test if Serve does not return nil once cancelled.
func serve(t *testing.T, ca *devca.CA) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ca.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve returned %v after cancel, want nil", err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("Serve did not return within %s of cancel", waitTimeout)
		}
	})
	return lis.Addr().String()
}

// rootPool reads the CA's root-cert.pem into a pool, as a client would.
func rootPool(t *testing.T, ca *devca.CA) *x509.CertPool {
	t.Helper()
	rootPEM, err := os.ReadFile(ca.RootCertPath())
	if err != nil {
		t.Fatalf("read root: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("no certificate in %s", ca.RootCertPath())
	}
	return pool
}

// dial connects a real gRPC client over TLS that trusts the CA's root file.
func dial(t *testing.T, ca *devca.CA, addr string) securityapi.IstioCertificateServiceClient {
	t.Helper()
	creds := credentials.NewTLS(&tls.Config{
		RootCAs:    rootPool(t, ca),
		ServerName: "localhost",
		MinVersion: tls.VersionTLS12,
	})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() {
		if err := conn.Close(); err != nil {
			t.Errorf("close client: %v", err)
		}
	})
	return securityapi.NewIstioCertificateServiceClient(conn)
}

// startCA creates a CA, serves it and returns a client and the token.
func startCA(t *testing.T, cfg devca.Config) (*devca.CA, securityapi.IstioCertificateServiceClient, string) {
	t.Helper()
	ca := newCA(t, cfg)
	client := dial(t, ca, serve(t, ca))
	return ca, client, readToken(t, ca)
}

func readToken(t *testing.T, ca *devca.CA) string {
	t.Helper()
	b, err := os.ReadFile(ca.TokenPath())
	if err != nil {
		t.Fatalf("read token: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// callCtx returns a context with a deadline carrying the given metadata
// pairs, as an agent sends them.
func callCtx(t *testing.T, kv ...string) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// authCtx is callCtx with a bearer token and a cluster ID.
func authCtx(t *testing.T, token string) context.Context {
	t.Helper()
	return callCtx(t, "authorization", "Bearer "+token, "ClusterID", clusterID)
}

// csrSpec describes a CSR; a nil key gets a fresh P-256 key.
type csrSpec struct {
	key    crypto.Signer
	uris   []string
	dns    []string
	ips    []net.IP
	emails []string
}

// csrDER returns a DER CSR signed by spec.key.
func csrDER(t *testing.T, spec csrSpec) []byte {
	t.Helper()
	if spec.key == nil {
		spec.key = testpki.NewKey(t)
	}
	tmpl := &x509.CertificateRequest{DNSNames: spec.dns, IPAddresses: spec.ips, EmailAddresses: spec.emails}
	for _, u := range spec.uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatalf("parse %q: %v", u, err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, spec.key)
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	return der
}

func csrPEM(t *testing.T, spec csrSpec) string {
	t.Helper()
	return encodeCSR(csrDER(t, spec))
}

func encodeCSR(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// parseCert parses a string holding exactly one PEM certificate.
func parseCert(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	block, rest := pem.Decode([]byte(s))
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %q", s)
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		t.Fatalf("more than one PEM block in one chain element: %q", s)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("parse certificate: %v", err)
	}
	return cert
}
