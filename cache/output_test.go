package cache

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/tls/certprovider"
	"google.golang.org/grpc/credentials/tls/certprovider/pemfile"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/logtest"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// runOutput runs an OutputWriter until the test ends.
func runOutput(t *testing.T, cfg OutputConfig) *logtest.Logs {
	t.Helper()
	log, logs := logtest.New(zapcore.DebugLevel)
	cfg.Logger = log
	w, err := NewOutputWriter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return logs
}

// waitFiles waits until dir holds exactly the given contents.
func waitFiles(t *testing.T, dir string, want map[string][]byte) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		ok := true
		for name, content := range want {
			got, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil || !bytes.Equal(got, content) {
				ok = false
				break
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not hold the expected files", dir)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func stat(t *testing.T, path string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func identitySecrets(root *testpki.CA, l *testpki.Leaf) []*Secret {
	return []*Secret{
		{Name: WorkloadCertName, Kind: TLSCertificate, CertChainPEM: l.ChainPEM, PrivateKeyPEM: l.KeyPEM, Certs: []*x509.Certificate{l.Cert}, Source: "test"},
		{Name: RootCertName, Kind: ValidationContext, TrustedCAPEM: root.CertPEM, Certs: []*x509.Certificate{root.Cert}, Source: "test"},
	}
}

func outputFiles(root *testpki.CA, l *testpki.Leaf) map[string][]byte {
	return map[string][]byte{OutputCertChainFile: l.ChainPEM, OutputKeyFile: l.KeyPEM, OutputRootCertFile: root.CertPEM}
}

func TestOutputWriterWritesAtomicallyOnlyWhatChanged(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	store := NewStore(clock.Real())
	root := testpki.NewRoot(t, "out root")
	l1 := root.IssueLeaf(t, testpki.LeafOptions{})
	store.Update(identitySecrets(root, l1), nil)
	logs := runOutput(t, OutputConfig{Dir: dir, Source: store})

	waitFiles(t, dir, outputFiles(root, l1))
	waitLogs(t, logs, "certificates written to disk", 1)
	checkLayout(t, dir)
	firstVersion := dataTarget(t, dir)

	// A change elsewhere in the snapshot, then a rotation: once the
	// rotation is on disk the first change was handled too, and neither
	// rewrote the root.
	store.Update([]*Secret{{Name: "file-root:/x", Kind: ValidationContext, TrustedCAPEM: root.CertPEM, Certs: []*x509.Certificate{root.Cert}}}, nil)
	l2 := root.IssueLeaf(t, testpki.LeafOptions{})
	store.Update(identitySecrets(root, l2), nil)
	waitFiles(t, dir, outputFiles(root, l2))
	// The write is logged once it is complete.
	written := waitLogs(t, logs, "certificates written to disk", 2)
	checkLayout(t, dir)
	if dataTarget(t, dir) == firstVersion {
		t.Fatal("the rotation was written into the version readers had, not into a new one")
	}
	if _, err := os.Lstat(filepath.Join(dir, firstVersion)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the previous version %s was not removed (%v)", firstVersion, err)
	}
	if files := written[1].ContextMap()["files"]; fmt.Sprint(files) != fmt.Sprint([]any{OutputKeyFile, OutputCertChainFile}) {
		t.Fatalf("second write changed %v, want the key and the chain only", files)
	}
	if v := written[1].ContextMap()["version"]; v != dataTarget(t, dir) {
		t.Fatalf("second write logged version %v, ..data is %s", v, dataTarget(t, dir))
	}

	// A writer started on files that are already current writes nothing.
	// Its second look at the snapshot (after a notification sent once it
	// made the first) comes after its first write attempt has ended.
	src := &lookingSource{SnapshotSource: store, looked: make(chan struct{}, 16)}
	logs2 := runOutput(t, OutputConfig{Dir: dir, Source: src})
	src.waitLook(t)
	store.notify()
	src.waitLook(t)
	if n := logs2.FilterMessage("certificates written to disk").Len(); n != 0 {
		t.Fatalf("a new writer rewrote current files (%d writes)", n)
	}
}

// lookingSource is a SnapshotSource that reports every Snapshot call: the
// writer reads the snapshot at the start of each write attempt.
type lookingSource struct {
	SnapshotSource
	looked chan struct{}
}

func (s *lookingSource) Snapshot() *Snapshot {
	s.looked <- struct{}{}
	return s.SnapshotSource.Snapshot()
}

// waitLook waits for the next Snapshot call.
func (s *lookingSource) waitLook(t *testing.T) {
	t.Helper()
	select {
	case <-s.looked:
	case <-time.After(waitLimit):
		t.Fatal("the writer did not read the snapshot")
	}
}

// waitLogs waits until logs hold n lines with msg and returns them.
func waitLogs(t *testing.T, logs *logtest.Logs, msg string, n int) []observer.LoggedEntry {
	t.Helper()
	lines := logs.WaitForMessage(t, msg, n, waitLimit)
	if len(lines) != n {
		t.Fatalf("%d lines %q logged, want %d", len(lines), msg, n)
	}
	return lines
}

// dataTarget returns the version directory ..data names.
func dataTarget(t *testing.T, dir string) string {
	t.Helper()
	target, err := os.Readlink(filepath.Join(dir, outputDataLink))
	if err != nil {
		t.Fatal(err)
	}
	return target
}

// checkLayout checks that dir holds kubelet's layout and nothing else:
// ..data naming one version directory that holds the three files with
// their modes, and each file name a symlink to ..data/<name>.
func checkLayout(t *testing.T, dir string, others ...string) {
	t.Helper()
	version := dataTarget(t, dir)
	if !isVersionDir(version) {
		t.Fatalf("..data points to %q", version)
	}
	want := append([]string{outputDataLink, version, OutputCertChainFile, OutputKeyFile, OutputRootCertFile}, others...)
	slices.Sort(want)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, want) {
		t.Fatalf("%s holds %v, want %v", dir, names, want)
	}
	for _, name := range outputFileNames {
		if target, err := os.Readlink(filepath.Join(dir, name)); err != nil || target != filepath.Join(outputDataLink, name) {
			t.Fatalf("%s links to %q (%v), want ..data/%s", name, target, err, name)
		}
	}
	if got := stat(t, filepath.Join(dir, version)).Mode().Perm(); got != 0o755 {
		t.Fatalf("version directory has mode %o, want 755", got)
	}
	for name, mode := range map[string]os.FileMode{OutputKeyFile: OutputKeyMode, OutputCertChainFile: OutputCertMode, OutputRootCertFile: OutputCertMode} {
		if got := stat(t, filepath.Join(dir, name)).Mode().Perm(); got != mode {
			t.Fatalf("%s has mode %o, want %o", name, got, mode)
		}
	}
}

func TestOutputWriterRetriesFailedWrites(t *testing.T) {
	dir := t.TempDir()
	// A directory where the key must go makes the rename fail.
	if err := os.Mkdir(filepath.Join(dir, OutputKeyFile), 0o755); err != nil {
		t.Fatal(err)
	}
	clk := clocktest.New(start)
	store := NewStore(clk)
	root := testpki.NewRoot(t, "out root")
	l := root.IssueLeaf(t, testpki.LeafOptions{})
	store.Update(identitySecrets(root, l), nil)
	logs := runOutput(t, OutputConfig{Dir: dir, Source: store, Clock: clk})

	if !clk.WaitForTimers(1, waitLimit) {
		t.Fatal("no retry scheduled after a failed write")
	}
	line := logs.FilterMessage("certificates not written to disk").All()
	if len(line) != 1 || line[0].ContextMap()["hint"] == "" {
		t.Fatalf("failure log = %v", line)
	}
	if err := os.Remove(filepath.Join(dir, OutputKeyFile)); err != nil {
		t.Fatal(err)
	}
	clk.Advance(outputRetryInitial)
	waitFiles(t, dir, outputFiles(root, l))
}

func TestOutputWriterFailsWhenDirCannotBeCreated(t *testing.T) {
	file := writeFile(t, t.TempDir(), "file", []byte("x"))
	w, err := NewOutputWriter(OutputConfig{Dir: filepath.Join(file, "out"), Source: NewStore(clock.Real())})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Run(context.Background()); err == nil {
		t.Fatal("Run succeeded with a directory under a file")
	}
}

// mtlsServer is a gRPC server whose TLS identity and trust come from a
// grpc-go certificate provider at every handshake, and that records the
// serial of each client certificate it sees.
type mtlsServer struct {
	addr string
	mu   sync.Mutex
	seen []*big.Int
}

func startMTLSServer(t *testing.T, prov certprovider.Provider, now func() time.Time) *mtlsServer {
	t.Helper()
	s := &mtlsServer{}
	cfg := &tls.Config{
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			km, err := prov.KeyMaterial(hello.Context())
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				Certificates: km.Certs,
				ClientCAs:    km.Roots,
				ClientAuth:   tls.RequireAndVerifyClientCert,
				MinVersion:   tls.VersionTLS13,
				Time:         now, // the certificates live on the test's clock
			}, nil
		},
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if p, ok := peer.FromContext(ctx); ok {
				if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
					s.mu.Lock()
					s.seen = append(s.seen, info.State.PeerCertificates[0].SerialNumber)
					s.mu.Unlock()
				}
			}
			return handler(ctx, req)
		}))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = lis.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return s
}

func (s *mtlsServer) lastClientSerial() *big.Int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.seen) == 0 {
		return nil
	}
	return s.seen[len(s.seen)-1]
}

// call opens a new connection with credentials from prov, makes one RPC
// over mutual TLS, and returns the serial of the server's certificate. The
// client checks the server's chain against the provider's roots and its
// SPIFFE ID, as proxyless gRPC does (the certificate has no DNS name).
func call(t *testing.T, addr string, prov certprovider.Provider, now func() time.Time, wantID string) *big.Int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	km, err := prov.KeyMaterial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &km.Certs[0], nil
		},
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			certs := make([]*x509.Certificate, len(raw))
			for i, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				certs[i] = c
			}
			inter := x509.NewCertPool()
			for _, c := range certs[1:] {
				inter.AddCert(c)
			}
			if _, err := certs[0].Verify(x509.VerifyOptions{Roots: km.Roots, Intermediates: inter, CurrentTime: now(),
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return err
			}
			if len(certs[0].URIs) != 1 || certs[0].URIs[0].String() != wantID {
				return errors.New("unexpected server identity")
			}
			return nil
		},
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		t.Fatalf("mTLS call: %v", err)
	}
	return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].SerialNumber
}

func TestOutputCertsWorkWithGRPCPemFileProvider(t *testing.T) {
	h := newHarness(t, nil)
	h.waitCall()
	h.waitPublished()
	first := h.current()
	roots, _ := h.mgr.Snapshot().Get(RootCertName)

	dir := filepath.Join(t.TempDir(), "out")
	runOutput(t, OutputConfig{Dir: dir, Source: h.mgr})
	waitFiles(t, dir, map[string][]byte{OutputCertChainFile: first.CertChainPEM, OutputKeyFile: first.PrivateKeyPEM, OutputRootCertFile: roots.TrustedCAPEM})

	prov, err := pemfile.NewProvider(pemfile.Options{
		CertFile:        filepath.Join(dir, OutputCertChainFile),
		KeyFile:         filepath.Join(dir, OutputKeyFile),
		RootFile:        filepath.Join(dir, OutputRootCertFile),
		RefreshDuration: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prov.Close)
	srv := startMTLSServer(t, prov, h.clock.Now)

	id := h.id.String()
	if got := call(t, srv.addr, prov, h.clock.Now, id); got.Cmp(first.Certs[0].SerialNumber) != 0 {
		t.Fatalf("server presented serial %x, want %x", got, first.Certs[0].SerialNumber)
	}
	if got := srv.lastClientSerial(); got == nil || got.Cmp(first.Certs[0].SerialNumber) != 0 {
		t.Fatalf("client presented serial %v, want %x", got, first.Certs[0].SerialNumber)
	}

	// Rotate: the writer puts the new identity on disk, the provider
	// picks it up, and new connections use it.
	h.advanceToNextAttempt()
	h.waitPublished()
	rotated := h.current()
	if rotated.Certs[0].SerialNumber.Cmp(first.Certs[0].SerialNumber) == 0 {
		t.Fatal("no rotation")
	}
	waitFiles(t, dir, map[string][]byte{OutputCertChainFile: rotated.CertChainPEM, OutputKeyFile: rotated.PrivateKeyPEM})
	deadline := time.Now().Add(waitLimit)
	for {
		km, err := prov.KeyMaterial(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(km.Certs[0].Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if leaf.SerialNumber.Cmp(rotated.Certs[0].SerialNumber) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pemfile provider did not pick up the rotated files")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := call(t, srv.addr, prov, h.clock.Now, id); got.Cmp(rotated.Certs[0].SerialNumber) != 0 {
		t.Fatalf("after rotation the server presented serial %x, want %x", got, rotated.Certs[0].SerialNumber)
	}
	if got := srv.lastClientSerial(); got.Cmp(rotated.Certs[0].SerialNumber) != 0 {
		t.Fatalf("after rotation the client presented serial %x, want %x", got, rotated.Certs[0].SerialNumber)
	}
}

// TestOutputCertsWorkWithMountedCertReader points the agent's own
// mounted-certificate reader (internal/filewatch, which follows kubelet's
// ..data swaps) at an output directory: every rotation written there is
// picked up, and the reader never sees a key that does not match its
// chain.
func TestOutputCertsWorkWithMountedCertReader(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	store := NewStore(clock.Real())
	root := testpki.NewRoot(t, "out root")
	id := testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/default/sa/web"}}
	l := root.IssueLeaf(t, id)
	store.Update(identitySecrets(root, l), nil)
	logs := runOutput(t, OutputConfig{Dir: dir, Source: store})
	waitLogs(t, logs, "certificates written to disk", 1)

	h := newFileHarness(t, func(c *Config) { c.MountedCertDir, c.Signer, c.FileDebounce = dir, nil, 0 })
	h.waitServing(WorkloadCertName, l)
	for i := range 5 {
		l = root.IssueLeaf(t, id)
		store.Update(identitySecrets(root, l), nil)
		waitLogs(t, logs, "certificates written to disk", i+2)
		h.waitServing(WorkloadCertName, l)
	}
	if n := h.totalFileErrors(); n != 0 {
		t.Fatalf("the reader refused %d reads of the output directory", n)
	}
}
