package caclient_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/sdsagent/sdsagent/internal/caclient"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// serverName is the only DNS name in the fake CA's certificate besides
// localhost; connecting to 127.0.0.1 needs it as Config.ServerName.
const serverName = "istiod.istio-system.svc"

const testCSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"

// testChain is what the fake CA answers by default.
func testChain() []string { return []string{"leaf-pem\n", "intermediate-pem\n", "root-pem\n"} }

// call is what the fake CA received.
type call struct {
	md  metadata.MD
	req *securityapi.IstioCertificateRequest
}

// fakeCA is an IstioCertificateService that records calls and answers with
// respond, or with testChain when respond is nil.
type fakeCA struct {
	securityapi.UnimplementedIstioCertificateServiceServer
	respond func(ctx context.Context) ([]string, error)

	mu    sync.Mutex
	calls []call
}

func (f *fakeCA) CreateCertificate(ctx context.Context, req *securityapi.IstioCertificateRequest) (*securityapi.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.calls = append(f.calls, call{md: md.Copy(), req: req})
	f.mu.Unlock()
	if f.respond == nil {
		return &securityapi.IstioCertificateResponse{CertChain: testChain()}, nil
	}
	chain, err := f.respond(ctx)
	if err != nil {
		return nil, err
	}
	return &securityapi.IstioCertificateResponse{CertChain: chain}, nil
}

func (f *fakeCA) recorded() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

// testCA is a running fake CA.
type testCA struct {
	fake     *fakeCA
	addr     string
	root     *testpki.CA
	rootFile string // PEM of root, for Config.RootCertFile

	mu  sync.Mutex
	sni []string
}

// startCA serves fake over TLS, with a certificate for serverName and
// localhost, on 127.0.0.1.
func startCA(t *testing.T, fake *fakeCA) *testCA {
	t.Helper()
	root := testpki.NewRoot(t, "test root")
	leaf := root.NewIntermediate(t, "test intermediate").IssueLeaf(t, testpki.LeafOptions{DNSNames: []string{serverName, "localhost"}})
	cert, err := tls.X509KeyPair(leaf.ChainPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatalf("server key pair: %v", err)
	}
	ca := &testCA{fake: fake, root: root, rootFile: writeFile(t, "root.pem", string(root.CertPEM))}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			ca.mu.Lock()
			ca.sni = append(ca.sni, hello.ServerName)
			ca.mu.Unlock()
			return nil, nil
		},
	})
	ca.addr = serve(t, fake, grpc.Creds(creds))
	return ca
}

// serverNames returns the SNI of every handshake so far.
func (ca *testCA) serverNames() []string {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return append([]string(nil), ca.sni...)
}

// serve runs a gRPC server for fake on 127.0.0.1 until the test ends.
func serve(t *testing.T, fake *fakeCA, opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := grpc.NewServer(opts...)
	securityapi.RegisterIstioCertificateServiceServer(srv, fake)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		// Stop may come before Serve starts; that is a clean exit too.
		if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("serve: %v", err)
		}
	})
	return lis.Addr().String()
}

// config returns a TLS client config for ca with token "token-one".
func (ca *testCA) config(t *testing.T) caclient.Config {
	t.Helper()
	return caclient.Config{
		Addr:         ca.addr,
		RootCertFile: ca.rootFile,
		ServerName:   serverName,
		TokenFile:    writeFile(t, "token", "token-one\n"),
		ClusterID:    "Kubernetes",
	}
}

func newClient(t *testing.T, cfg caclient.Config) *caclient.Client {
	t.Helper()
	c, err := caclient.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// writeFile writes content to name in a per-test directory and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	rewrite(t, path, content)
	return path
}

func rewrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

// freeAddr returns a local address where nothing listens.
func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatalf("close listener: %v", err)
	}
	return addr
}

func sign(t *testing.T, c *caclient.Client) ([]string, error) {
	t.Helper()
	return c.Sign(context.Background(), []byte(testCSR), time.Hour)
}

func mustSign(t *testing.T, c *caclient.Client) []string {
	t.Helper()
	chain, err := sign(t, c)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return chain
}

// grpcCode returns the gRPC status code an error from Sign carries: the
// CA's answer, or gRPC's verdict when the call did not complete
// (Unavailable, DeadlineExceeded, Canceled). It returns codes.OK for nil
// and codes.Unknown for errors that carry no code, such as an unreadable
// token file or an empty chain. wantError checks Sign's errors with it,
// and TestGRPCCode checks it.
func grpcCode(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus().Code()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	return codes.Unknown
}

// wantError checks err's code and that its message holds every part.
func wantError(t *testing.T, err error, code codes.Code, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Sign succeeded, want error with code %s", code)
	}
	t.Logf("error: %v", err)
	if got := grpcCode(err); got != code {
		t.Errorf("Code(%v) = %s, want %s", err, got, code)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

func header(md metadata.MD, key string) string {
	return strings.Join(md.Get(key), ",")
}

func TestSignHappyPath(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	c := newClient(t, ca.config(t))

	chain, err := c.Sign(context.Background(), []byte(testCSR), 90*time.Minute+500*time.Millisecond)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if strings.Join(chain, "|") != strings.Join(testChain(), "|") {
		t.Errorf("chain = %q, want %q", chain, testChain())
	}
	calls := ca.fake.recorded()
	if len(calls) != 1 {
		t.Fatalf("CA got %d calls, want 1", len(calls))
	}
	got := calls[0]
	if got.req.GetCsr() != testCSR {
		t.Errorf("csr = %q, want %q", got.req.GetCsr(), testCSR)
	}
	if got.req.GetValidityDuration() != 5400 {
		t.Errorf("validity_duration = %d, want 5400", got.req.GetValidityDuration())
	}
	if h := header(got.md, "authorization"); h != "Bearer token-one" {
		t.Errorf("authorization = %q, want %q", h, "Bearer token-one")
	}
	if h := header(got.md, "ClusterID"); h != "Kubernetes" {
		t.Errorf("ClusterID = %q, want %q", h, "Kubernetes")
	}
	if sni := ca.serverNames(); len(sni) != 1 || sni[0] != serverName {
		t.Errorf("SNI = %q, want [%q]", sni, serverName)
	}
}

func TestSignWithoutTokenOrClusterID(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	cfg := ca.config(t)
	cfg.TokenFile = ""
	cfg.ClusterID = ""
	c := newClient(t, cfg)

	mustSign(t, c)
	md := ca.fake.recorded()[0].md
	for _, key := range []string{"authorization", "ClusterID"} {
		if v, ok := md[strings.ToLower(key)]; ok {
			t.Errorf("metadata %s = %q, want none", key, v)
		}
	}
}

func TestSignRereadsToken(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	cfg := ca.config(t)
	c := newClient(t, cfg)

	mustSign(t, c)
	rewrite(t, cfg.TokenFile, "  token-two\n\n")
	mustSign(t, c)

	calls := ca.fake.recorded()
	if len(calls) != 2 {
		t.Fatalf("CA got %d calls, want 2", len(calls))
	}
	for i, want := range []string{"Bearer token-one", "Bearer token-two"} {
		if h := header(calls[i].md, "authorization"); h != want {
			t.Errorf("call %d: authorization = %q, want %q", i, h, want)
		}
	}
}

func TestSignTokenFileErrors(t *testing.T) {
	tests := []struct {
		name    string
		content *string // nil: no file
		want    string
		wantIs  error
	}{
		{name: "missing", want: "check that the service account token is mounted", wantIs: fs.ErrNotExist},
		{name: "empty", content: new(""), want: "file is empty"},
		{name: "only whitespace", content: new(" \n\t\n"), want: "file is empty"},
		{name: "not a header value", content: new("a b"), want: "not allowed in a header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := startCA(t, &fakeCA{})
			cfg := ca.config(t)
			cfg.TokenFile = filepath.Join(t.TempDir(), "istio-token")
			if tt.content != nil {
				rewrite(t, cfg.TokenFile, *tt.content)
			}
			c := newClient(t, cfg)

			_, err := sign(t, c)
			wantError(t, err, codes.Unknown, cfg.TokenFile, tt.want)
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.wantIs)
			}
			if n := len(ca.fake.recorded()); n != 0 {
				t.Errorf("CA got %d calls, want none", n)
			}
		})
	}
}

func TestSignCAErrors(t *testing.T) {
	tests := []struct {
		name  string
		err   error
		code  codes.Code
		parts []string
	}{
		{
			name:  "unauthenticated",
			err:   status.Error(codes.Unauthenticated, "authenticate failure"),
			code:  codes.Unauthenticated,
			parts: []string{"CA rejected the token", "audience and expiry", "authenticate failure"},
		},
		{
			name:  "invalid argument",
			err:   status.Error(codes.InvalidArgument, "requested TTL 48h0m0s is greater than the max allowed TTL 24h0m0s"),
			code:  codes.InvalidArgument,
			parts: []string{"requested TTL 48h0m0s is greater than the max allowed TTL 24h0m0s"},
		},
		{
			name:  "permission denied",
			err:   status.Error(codes.PermissionDenied, "not allowed"),
			code:  codes.PermissionDenied,
			parts: []string{"CA refused to sign", "not allowed"},
		},
		{
			name:  "internal",
			err:   status.Error(codes.Internal, "signing failed"),
			code:  codes.Internal,
			parts: []string{"signing failed"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := startCA(t, &fakeCA{respond: func(context.Context) ([]string, error) { return nil, tt.err }})
			cfg := ca.config(t)
			c := newClient(t, cfg)

			_, err := sign(t, c)
			parts := tt.parts
			if tt.code == codes.Unauthenticated {
				parts = append(parts, cfg.TokenFile)
			}
			wantError(t, err, tt.code, parts...)
		})
	}
}

func TestSignUnauthenticatedWithoutTokenFile(t *testing.T) {
	ca := startCA(t, &fakeCA{respond: func(context.Context) ([]string, error) {
		return nil, status.Error(codes.Unauthenticated, "no token")
	}})
	cfg := ca.config(t)
	cfg.TokenFile = ""
	c := newClient(t, cfg)

	_, err := sign(t, c)
	wantError(t, err, codes.Unauthenticated, "no token file is configured")
}

func TestSignNeverShowsToken(t *testing.T) {
	const token = "eyJhbGciOiJSUzI1NiJ9.secret-claims.signature"
	ca := startCA(t, &fakeCA{respond: func(ctx context.Context) ([]string, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		return nil, status.Errorf(codes.Unauthenticated, "bad token %q", header(md, "authorization"))
	}})
	cfg := ca.config(t)
	rewrite(t, cfg.TokenFile, token)
	core, logs := observer.New(zapcore.DebugLevel)
	cfg.Logger = zap.New(core)
	c := newClient(t, cfg)

	_, err := sign(t, c)
	wantError(t, err, codes.Unauthenticated, "[redacted]")
	if strings.Contains(err.Error(), "secret-claims") {
		t.Errorf("error shows the token: %v", err)
	}
	for _, e := range logs.All() {
		for k, v := range e.ContextMap() {
			if strings.Contains(e.Message, "secret-claims") || strings.Contains(toString(v), "secret-claims") {
				t.Errorf("log %q field %s shows the token", e.Message, k)
			}
		}
	}
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	if e, ok := v.(error); ok {
		return e.Error()
	}
	return ""
}

func TestSignEmptyChain(t *testing.T) {
	tests := []struct {
		name  string
		chain []string
	}{
		{name: "nil", chain: nil},
		{name: "empty", chain: []string{}},
		{name: "empty element", chain: []string{"leaf-pem", ""}},
		{name: "blank element", chain: []string{" \n", "root-pem"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := startCA(t, &fakeCA{respond: func(context.Context) ([]string, error) { return tt.chain, nil }})
			c := newClient(t, ca.config(t))

			chain, err := sign(t, c)
			wantError(t, err, codes.Unknown, "CA returned an empty certificate chain")
			if chain != nil {
				t.Errorf("chain = %q, want nil", chain)
			}
		})
	}
}

func TestSignCADown(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	cfg := ca.config(t)
	cfg.Addr = freeAddr(t)
	c := newClient(t, cfg)

	// Twice: the second call makes a new attempt and reports it the same way.
	for range 2 {
		_, err := sign(t, c)
		wantError(t, err, codes.Unavailable, cfg.Addr, "unreachable")
	}
}

func TestSignCAHangs(t *testing.T) {
	ca := startCA(t, &fakeCA{respond: func(ctx context.Context) ([]string, error) {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}})

	t.Run("timeout", func(t *testing.T) {
		cfg := ca.config(t)
		cfg.Timeout = 200 * time.Millisecond
		c := newClient(t, cfg)

		_, err := sign(t, c)
		wantError(t, err, codes.DeadlineExceeded, ca.addr, "unreachable or slow")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("errors.Is(%v, context.DeadlineExceeded) = false", err)
		}
		if errors.Is(err, context.Canceled) {
			t.Errorf("errors.Is(%v, context.Canceled) = true", err)
		}
	})

	t.Run("shorter context deadline", func(t *testing.T) {
		cfg := ca.config(t)
		cfg.Timeout = time.Hour
		c := newClient(t, cfg)

		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := c.Sign(ctx, []byte(testCSR), time.Hour)
		wantError(t, err, codes.DeadlineExceeded, ca.addr)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("errors.Is(%v, context.DeadlineExceeded) = false", err)
		}
	})
}

func TestSignCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca := startCA(t, &fakeCA{respond: func(srvCtx context.Context) ([]string, error) {
		cancel() // the caller gives up while the CA works
		<-srvCtx.Done()
		return nil, status.FromContextError(srvCtx.Err()).Err()
	}})
	c := newClient(t, ca.config(t))

	_, err := c.Sign(ctx, []byte(testCSR), time.Hour)
	wantError(t, err, codes.Canceled)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("errors.Is(%v, context.Canceled) = false", err)
	}
}

func TestSignTLSVerification(t *testing.T) {
	other := testpki.NewRoot(t, "other root")
	tests := []struct {
		name string
		// edit changes a working config.
		edit  func(t *testing.T, cfg *caclient.Config)
		parts []string
		// as is the x509 error type expected in the chain, if any.
		as func(error) bool
	}{
		{
			name:  "wrong root",
			edit:  func(t *testing.T, cfg *caclient.Config) { rewrite(t, cfg.RootCertFile, string(other.CertPEM)) },
			parts: []string{"TLS verification", "unknown authority"},
			as:    func(err error) bool { var e x509.UnknownAuthorityError; return errors.As(err, &e) },
		},
		{
			name:  "wrong server name",
			edit:  func(t *testing.T, cfg *caclient.Config) { cfg.ServerName = "wrong.example.com" },
			parts: []string{"TLS verification", "wrong.example.com"},
			as:    func(err error) bool { var e x509.HostnameError; return errors.As(err, &e) },
		},
		{
			name:  "default server name not in certificate",
			edit:  func(t *testing.T, cfg *caclient.Config) { cfg.ServerName = "" },
			parts: []string{"TLS verification", `"127.0.0.1"`},
			as:    func(err error) bool { var e x509.HostnameError; return errors.As(err, &e) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := startCA(t, &fakeCA{})
			cfg := ca.config(t)
			tt.edit(t, &cfg)
			c := newClient(t, cfg)

			_, err := sign(t, c)
			wantError(t, err, codes.Unavailable, append(tt.parts, cfg.RootCertFile, cfg.Addr)...)
			if !tt.as(err) {
				t.Errorf("error %v does not wrap the expected x509 error", err)
			}
			if n := len(ca.fake.recorded()); n != 0 {
				t.Errorf("CA got %d calls, want none", n)
			}
		})
	}
}

func TestSignDefaultServerName(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	cfg := ca.config(t)
	_, port, err := net.SplitHostPort(ca.addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr = net.JoinHostPort("localhost", port)
	cfg.ServerName = ""
	c := newClient(t, cfg)

	mustSign(t, c)
}

func TestSignRereadsRoots(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	cfg := ca.config(t)
	rewrite(t, cfg.RootCertFile, string(testpki.NewRoot(t, "old root").CertPEM))
	c := newClient(t, cfg)

	_, err := sign(t, c)
	wantError(t, err, codes.Unavailable, cfg.RootCertFile)

	// The root file is rotated on disk: the same client now trusts the CA.
	rewrite(t, cfg.RootCertFile, string(ca.root.CertPEM))
	if chain := mustSign(t, c); len(chain) != len(testChain()) {
		t.Errorf("chain has %d elements, want %d", len(chain), len(testChain()))
	}

	// Removed after a connection exists: the working connection is kept.
	if err := os.Remove(cfg.RootCertFile); err != nil {
		t.Fatal(err)
	}
	mustSign(t, c)
}

func TestSignRootFileGoneBeforeConnecting(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	cfg := ca.config(t)
	c := newClient(t, cfg)
	if err := os.Remove(cfg.RootCertFile); err != nil {
		t.Fatal(err)
	}

	_, err := sign(t, c)
	wantError(t, err, codes.Unavailable, cfg.RootCertFile, "no such file")
}

func TestSignRootFileMissingAtStart(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	cfg := ca.config(t)
	for _, content := range []string{"", "not a certificate\n"} {
		if content == "" {
			if err := os.Remove(cfg.RootCertFile); err != nil {
				t.Fatal(err)
			}
		} else {
			rewrite(t, cfg.RootCertFile, content)
		}
		// New accepts it: the root may be mounted after the agent starts.
		c := newClient(t, cfg)
		_, err := sign(t, c)
		wantError(t, err, codes.Unavailable, cfg.RootCertFile)

		rewrite(t, cfg.RootCertFile, string(ca.root.CertPEM))
		mustSign(t, c)
	}
}

func TestSignPlaintext(t *testing.T) {
	fake := &fakeCA{}
	addr := serve(t, fake)
	c := newClient(t, caclient.Config{
		Addr:      addr,
		Plaintext: true,
		TokenFile: writeFile(t, "token", "plain-token"),
		ClusterID: "c1",
	})

	if chain := mustSign(t, c); len(chain) != len(testChain()) {
		t.Errorf("chain has %d elements, want %d", len(chain), len(testChain()))
	}
	md := fake.recorded()[0].md
	if h := header(md, "authorization"); h != "Bearer plain-token" {
		t.Errorf("authorization = %q, want %q", h, "Bearer plain-token")
	}
	if h := header(md, "ClusterID"); h != "c1" {
		t.Errorf("ClusterID = %q, want %q", h, "c1")
	}
}

func TestSignLocalArgumentErrors(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	c := newClient(t, ca.config(t))
	tests := []struct {
		name string
		csr  []byte
		ttl  time.Duration
		want string
	}{
		{name: "empty csr", csr: nil, ttl: time.Hour, want: "empty csr"},
		{name: "negative ttl", csr: []byte(testCSR), ttl: -time.Second, want: "negative ttl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Sign(context.Background(), tt.csr, tt.ttl)
			wantError(t, err, codes.Unknown, tt.want)
		})
	}
	if n := len(ca.fake.recorded()); n != 0 {
		t.Errorf("CA got %d calls, want none", n)
	}
}

func TestSignLogs(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	cfg := ca.config(t)
	core, logs := observer.New(zapcore.DebugLevel)
	cfg.Logger = zap.New(core)
	c := newClient(t, cfg)

	mustSign(t, c)
	entries := logs.FilterMessage("create certificate succeeded").All()
	if len(entries) != 1 {
		t.Fatalf("got %d success logs, want 1; all: %v", len(entries), logs.All())
	}
	e := entries[0]
	if e.LoggerName != "caclient" || e.Level != zapcore.DebugLevel {
		t.Errorf("logger %q level %s, want caclient debug", e.LoggerName, e.Level)
	}
	fields := e.ContextMap()
	for _, key := range []string{"addr", "ttl", "duration", "chain_length"} {
		if _, ok := fields[key]; !ok {
			t.Errorf("log has no %s field: %v", key, fields)
		}
	}
	if fields["addr"] != ca.addr || fields["chain_length"] != int64(len(testChain())) {
		t.Errorf("log fields = %v", fields)
	}
}

func TestConcurrentSign(t *testing.T) {
	tests := []struct {
		name string
		up   bool
	}{
		{name: "CA up", up: true},
		{name: "CA down", up: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := startCA(t, &fakeCA{})
			cfg := ca.config(t)
			if !tt.up {
				cfg.Addr = freeAddr(t)
			}
			c := newClient(t, cfg)

			const n = 16
			errs := make(chan error, n)
			var wg sync.WaitGroup
			for range n {
				wg.Go(func() {
					_, err := c.Sign(context.Background(), []byte(testCSR), time.Hour)
					errs <- err
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if tt.up && err != nil {
					t.Errorf("Sign: %v", err)
				}
				if !tt.up && grpcCode(err) != codes.Unavailable {
					t.Errorf("Sign: %v, want code Unavailable", err)
				}
			}
		})
	}
}

func TestClose(t *testing.T) {
	ca := startCA(t, &fakeCA{})
	c, err := caclient.New(ca.config(t))
	if err != nil {
		t.Fatal(err)
	}
	mustSign(t, c)
	for i := range 2 {
		if err := c.Close(); err != nil {
			t.Errorf("Close #%d: %v", i+1, err)
		}
	}
	if _, err := sign(t, c); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Sign after Close: %v, want closed error", err)
	}
}

func TestCloseUnused(t *testing.T) {
	c, err := caclient.New(caclient.Config{Addr: freeAddr(t), Plaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
}

func TestNewConfigErrors(t *testing.T) {
	root := writeFile(t, "root.pem", string(testpki.NewRoot(t, "root").CertPEM))
	tests := []struct {
		name string
		cfg  caclient.Config
		want string
	}{
		{name: "no address", cfg: caclient.Config{Plaintext: true}, want: "address is empty"},
		{name: "no port", cfg: caclient.Config{Addr: "istiod", Plaintext: true}, want: `"istiod"`},
		{name: "empty port", cfg: caclient.Config{Addr: "istiod:", Plaintext: true}, want: "no port"},
		{name: "negative timeout", cfg: caclient.Config{Addr: "istiod:15012", Plaintext: true, Timeout: -time.Second}, want: "negative timeout"},
		{name: "no root file", cfg: caclient.Config{Addr: "istiod:15012"}, want: "root certificate file is required"},
		{name: "no host to verify", cfg: caclient.Config{Addr: ":15012", RootCertFile: root}, want: "server name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := caclient.New(tt.cfg)
			if err == nil {
				_ = c.Close()
				t.Fatalf("New succeeded, want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestGRPCCode(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{name: "nil", err: nil, want: codes.OK},
		{name: "plain", err: errors.New("x"), want: codes.Unknown},
		{name: "status", err: status.Error(codes.NotFound, "x"), want: codes.NotFound},
		{name: "wrapped status", err: errors.Join(errors.New("a"), status.Error(codes.Aborted, "x")), want: codes.Aborted},
		{name: "context deadline", err: context.DeadlineExceeded, want: codes.DeadlineExceeded},
		{name: "context canceled", err: context.Canceled, want: codes.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := grpcCode(tt.err); got != tt.want {
				t.Errorf("Code(%v) = %s, want %s", tt.err, got, tt.want)
			}
		})
	}
}
