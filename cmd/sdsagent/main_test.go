package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// binPath is the sdsagent binary built for the tests that exec it: the
// one named by binaryEnv (`make test` builds it once), or else one built
// by TestMain.
var binPath string

const binaryEnv = "SDSAGENT_TEST_BINARY"

func TestMain(m *testing.M) {
	if socket := os.Getenv(peerChildEnv); socket != "" {
		os.Exit(peerChild(socket)) // a client under another uid (peercheck_e2e_test.go)
	}
	code := func() int {
		if binPath = os.Getenv(binaryEnv); binPath != "" {
			return m.Run() // built once by `make test`
		}
		dir, err := os.MkdirTemp("", "sdsagent-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binPath = filepath.Join(dir, "sdsagent")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build sdsagent: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

const waitLimit = 20 * time.Second

// logBuffer collects a process's log lines and lets tests wait for one.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newLogBuffer() *logBuffer { return &logBuffer{changed: make(chan struct{})} }

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.changed)
	b.changed = make(chan struct{})
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the JSON log lines decoded.
func (b *logBuffer) lines() []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// waitLine waits for a JSON log line whose msg contains msg and returns it.
func (b *logBuffer) waitLine(t *testing.T, msg string) map[string]any {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		b.mu.Lock()
		changed := b.changed
		b.mu.Unlock()
		for _, l := range b.lines() {
			if m, _ := l["msg"].(string); strings.Contains(m, msg) {
				return l
			}
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no log line %q in:\n%s", msg, b.String())
		}
	}
}

// waitFor waits until cond holds, checking it again after every write.
// The change channel is taken before cond is checked, so a line written
// in between is not missed.
func (b *logBuffer) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		b.mu.Lock()
		changed := b.changed
		b.mu.Unlock()
		if cond() {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; log:\n%s", what, b.String())
		}
	}
}

// proc is a subcommand run in-process, as main runs it.
type proc struct {
	logs   *logBuffer
	cancel context.CancelFunc
	done   chan int
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &proc{logs: newLogBuffer(), cancel: cancel, done: make(chan int, 1)}
	go func() { p.done <- run(ctx, args, func(string) string { return "" }, io.Discard, p.logs) }()
	t.Cleanup(func() {
		if code := p.stop(t); code != 0 {
			t.Errorf("%s exited %d; logs:\n%s", args[0], code, p.logs.String())
		}
	})
	return p
}

// stop cancels the process (as SIGTERM does) and returns its exit code.
func (p *proc) stop(t *testing.T) int {
	t.Helper()
	p.cancel()
	select {
	case code := <-p.done:
		p.done <- code
		return code
	case <-time.After(waitLimit):
		t.Fatalf("process did not stop; logs:\n%s", p.logs.String())
		return -1
	}
}

// tempDir returns a short directory, since socket paths are limited to 108 bytes.
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

type testCA struct {
	*proc
	addr, dir string
}

func startCA(t *testing.T, listen string, extra ...string) *testCA {
	t.Helper()
	dir := filepath.Join(tempDir(t), "ca")
	return startCAIn(t, dir, listen, extra...)
}

func startCAIn(t *testing.T, dir, listen string, extra ...string) *testCA {
	t.Helper()
	p := start(t, append([]string{"ca", "--dir", dir, "--listen", listen, "--log-format", "json"}, extra...)...)
	line := p.logs.waitLine(t, "development CA listening")
	return &testCA{proc: p, addr: line["addr"].(string), dir: dir}
}

type agent struct {
	*proc
	socket, http string
}

func (ca *testCA) agentArgs(socket string, extra ...string) []string {
	return append([]string{"run",
		"--ca-addr", ca.addr,
		"--ca-root-cert", filepath.Join(ca.dir, "root-cert.pem"),
		"--token-file", filepath.Join(ca.dir, "token"),
		"--socket", socket,
		"--http-addr", "127.0.0.1:0",
		"--log-format", "json",
	}, extra...)
}

func startAgent(t *testing.T, args []string) *agent {
	t.Helper()
	var socket string
	for i, a := range args {
		if a == "--socket" {
			socket = args[i+1]
		}
	}
	p := start(t, args...)
	line := p.logs.waitLine(t, "http endpoint listening")
	return &agent{proc: p, socket: socket, http: line["addr"].(string)}
}

func (a *agent) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + a.http + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func dial(t *testing.T, socket string) *grpc.ClientConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	conn, err := sdstest.Dial(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func openStream(t *testing.T, conn *grpc.ClientConn) *sdstest.Stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := sdstest.OpenStream(ctx, conn)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(); cancel() })
	return st
}

func recv(t *testing.T, st *sdstest.Stream, limit time.Duration) (*sdstest.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	return st.Recv(ctx)
}

// recvIdentity receives responses on st, ACKing each as Envoy does,
// until default and ROOTCA have both arrived, and returns the last
// response carrying the latest of each. A push carries only the secrets
// that changed: with mounted files, ROOTCA (its file loads first) can
// come alone a moment before default, which then comes alone too.
func recvIdentity(t *testing.T, st *sdstest.Stream) *sdstest.Response {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	var def, root *sdstest.Response
	for {
		resp, err := recv(t, st, time.Until(deadline))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.ACK(); err != nil {
			t.Fatal(err)
		}
		if resp.Secret("default") != nil {
			def = resp
		}
		if resp.Secret("ROOTCA") != nil {
			root = resp
		}
		if def != nil && root != nil {
			resp.Secrets = []*tlsv3.Secret{def.Secret("default"), root.Secret("ROOTCA")}
			return resp
		}
	}
}

// identity asks the agent for default and ROOTCA like Envoy, ACKs, and
// returns them.
func identity(t *testing.T, socket string) sdstest.Identity {
	t.Helper()
	st := openStream(t, dial(t, socket))
	if err := st.Request("default", "ROOTCA"); err != nil {
		t.Fatal(err)
	}
	id, err := sdstest.IdentityFrom(recvIdentity(t, st).Secrets)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
