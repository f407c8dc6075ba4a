// Package cfssltest runs a real `cfssl serve` (CFSSL v1.6.5, installed by
// `make tools`) for tests, with a CA from internal/testpki and a signing
// policy with the profiles the tests need. It is imported only by tests.
package cfssltest

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/internal/testtools"
)

// Profiles of the signing policy.
const (
	// ProfileWorkload signs without authentication for WorkloadExpiry.
	ProfileWorkload = "workload"
	// ProfileAuth requires authsign with AuthKeyHex.
	ProfileAuth = "authed"
	// ProfileShort signs for ShortExpiry only, whatever the agent asks.
	ProfileShort = "short"
)

// Lifetimes of the profiles. Each profile backdates by Backdate, which is
// part of the lifetime: CFSSL sets NotAfter = NotBefore + expiry, and
// rounds NotBefore to the minute before backdating, so a backdate under
// 30s could give a certificate that is not valid yet.
const (
	WorkloadExpiry = time.Hour
	ShortExpiry    = 10 * time.Minute
	Backdate       = time.Minute
)

// waitLimit bounds the wait for cfssl serve to answer.
const waitLimit = 30 * time.Second

// Options choose how the server runs.
type Options struct {
	// TLS serves https with a certificate for ServerName from Root.
	TLS bool
	// Intermediate makes CFSSL sign as an intermediate under Root, so the
	// chain above CFSSL's signer comes from the root file.
	Intermediate bool
	// CACertFile and CAKeyFile, when set, are the CA CFSSL signs with
	// (e.g. made by `cfssl genkey -initca`), a self-signed root; Root and
	// Signer are then nil and RootFile is CACertFile. TLS needs Root.
	CACertFile, CAKeyFile string
}

// ServerName is the name in the TLS certificate of a TLS server.
const ServerName = "localhost"

// Server is a running cfssl serve.
type Server struct {
	// URL is the API base URL, e.g. http://127.0.0.1:41234.
	URL string
	// Root is the CA the workloads trust; RootFile holds its PEM.
	Root     *testpki.CA
	RootFile string
	// Signer is the CA CFSSL signs with: Root, or an intermediate under it.
	Signer *testpki.CA
	// AuthKeyHex is the auth_key of ProfileAuth.
	AuthKeyHex string

	t    testing.TB
	bin  string
	args []string
	dir  string
	port int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	logs *bytes.Buffer
}

// Start starts cfssl serve on a free port of 127.0.0.1 and waits until it
// answers. The test fails in CI, and is skipped elsewhere, when cfssl is not
// installed. The server is stopped when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin := testtools.Need(t, "cfssl", "make tools")
	dir := t.TempDir()
	s := &Server{t: t, bin: bin, dir: dir}
	caFile, caKeyFile := opts.CACertFile, opts.CAKeyFile
	if caFile == "" {
		s.Root = testpki.NewRoot(t, "cfssl test root")
		s.Signer = s.Root
		if opts.Intermediate {
			s.Signer = s.Root.NewIntermediate(t, "cfssl test intermediate")
		}
		s.RootFile = s.write("root.pem", s.Root.CertPEM)
		caFile, caKeyFile = s.write("ca.pem", s.Signer.CertPEM), s.write("ca-key.pem", keyPEM(t, s.Signer))
	} else {
		s.RootFile = caFile
	}
	key := make([]byte, 16)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	s.AuthKeyHex = hex.EncodeToString(key)
	s.args = []string{
		"serve", "-address", "127.0.0.1", "-loglevel", "1",
		"-ca", caFile,
		"-ca-key", caKeyFile,
		"-config", s.write("config.json", s.config()),
	}
	scheme := "http"
	if opts.TLS {
		if s.Root == nil {
			t.Fatal("cfssltest: TLS needs the test's own root, not CACertFile")
		}
		tlsLeaf := s.Root.IssueLeaf(t, testpki.LeafOptions{DNSNames: []string{ServerName}})
		s.args = append(s.args,
			"-tls-cert", s.write("tls.pem", tlsLeaf.CertPEM),
			"-tls-key", s.write("tls-key.pem", tlsLeaf.KeyPEM))
		scheme = "https"
	}
	t.Cleanup(s.Stop)
	// A port picked free may be taken before cfssl binds it: try others.
	for attempt := 0; ; attempt++ {
		s.port = freePort(t)
		s.URL = fmt.Sprintf("%s://127.0.0.1:%d", scheme, s.port)
		err := s.start()
		if err == nil {
			return s
		}
		if attempt == 4 {
			t.Fatalf("cfssl serve did not start: %v\n%s", err, s.Logs())
		}
	}
}

// Restart starts the server again, on the same port, after Stop.
func (s *Server) Restart() {
	s.t.Helper()
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		if err = s.start(); err == nil {
			return
		}
	}
	s.t.Fatalf("cfssl serve did not restart on port %d: %v\n%s", s.port, err, s.Logs())
}

// Stop kills the server and waits for it to exit. It is idempotent.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Logs returns what cfssl serve printed.
func (s *Server) Logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.logs == nil {
		return ""
	}
	return s.logs.String()
}

// start runs cfssl serve and waits until its health endpoint answers; an
// error means it exited first, usually because the port was taken.
func (s *Server) start() error {
	logs := &bytes.Buffer{}
	cmd := exec.Command(s.bin, append(s.args, "-port", strconv.Itoa(s.port))...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = &lockedWriter{mu: &s.mu, w: logs}, &lockedWriter{mu: &s.mu, w: logs}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start cfssl serve: %v", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done, s.logs = cmd, done, logs
	s.mu.Unlock()

	client := &http.Client{Timeout: time.Second}
	if tr, ok := http.DefaultTransport.(*http.Transport); ok {
		tr = tr.Clone()
		tr.TLSClientConfig = s.healthTLS()
		client.Transport = tr
		defer tr.CloseIdleConnections()
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitLimit)
	for {
		resp, err := client.Get(s.URL + "/api/v1/cfssl/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-done:
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			return fmt.Errorf("cfssl serve exited: %s", logs)
		case <-deadline:
			s.Stop()
			return fmt.Errorf("cfssl serve did not answer on %s within %s", s.URL, waitLimit)
		case <-tick.C:
		}
	}
}

// config is the signing policy, in CFSSL's config JSON.
func (s *Server) config() []byte {
	usages := []string{"digital signature", "key encipherment", "server auth", "client auth"}
	profile := func(expiry time.Duration, authKey string) map[string]any {
		p := map[string]any{"usages": usages, "expiry": expiry.String(), "backdate": Backdate.String()}
		if authKey != "" {
			p["auth_key"] = authKey
		}
		return p
	}
	cfg := map[string]any{
		"signing": map[string]any{
			"default": profile(WorkloadExpiry, ""),
			"profiles": map[string]any{
				ProfileWorkload: profile(WorkloadExpiry, ""),
				ProfileAuth:     profile(WorkloadExpiry, "agent"),
				ProfileShort:    profile(ShortExpiry, ""),
			},
		},
		"auth_keys": map[string]any{
			"agent": map[string]string{"type": "standard", "key": s.AuthKeyHex},
		},
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	return data
}

func (s *Server) healthTLS() *tls.Config {
	if s.Root == nil {
		return nil
	}
	pool := x509.NewCertPool()
	pool.AddCert(s.Root.Cert)
	return &tls.Config{RootCAs: pool, ServerName: ServerName}
}

func (s *Server) write(name string, data []byte) string {
	s.t.Helper()
	p := filepath.Join(s.dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		s.t.Fatal(err)
	}
	return p
}

func keyPEM(t testing.TB, ca *testpki.CA) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

// lockedWriter serialises cfssl's stdout and stderr into one buffer.
type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
