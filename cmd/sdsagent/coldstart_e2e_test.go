package main

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingProxy forwards TCP connections to target and counts them.
type countingProxy struct {
	addr     string
	accepted atomic.Int32
	first    chan struct{} // closed at the first connection
}

func startCountingProxy(t *testing.T, target string) *countingProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{addr: lis.Addr().String(), first: make(chan struct{})}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			if p.accepted.Add(1) == 1 {
				close(p.first)
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(up, c); _ = up.Close() })
			wg.Go(func() { _, _ = io.Copy(c, up); _ = c.Close() })
		}
	})
	t.Cleanup(func() {
		_ = lis.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

// The agent opens its connection to the CA at start, not when the first
// CSR goes out: with the token file not there yet, no CSR can be sent,
// yet the CA sees the connection. Once the token appears, the CSR that
// follows uses that same connection. (Before, the connection and its TLS
// handshake came after the key and the token, on the critical path of the
// first certificate.)
func TestAgentConnectsToCABeforeTheFirstCSR(t *testing.T) {
	ca := startCA(t, "127.0.0.1:0")
	proxy := startCountingProxy(t, ca.addr)
	token := filepath.Join(tempDir(t), "token")
	a := startAgent(t, ca.agentArgs(filepath.Join(tempDir(t), "s.sock"),
		"--ca-addr", proxy.addr, "--token-file", token, "--log-level", "debug"))
	a.logs.waitLine(t, "certificate request failed")
	select {
	case <-proxy.first:
	case <-time.After(waitLimit):
		t.Fatalf("the agent opened no connection to the CA while it could send no CSR; logs:\n%s", a.logs.String())
	}
	// The handshake completes too, and the debug log dates it, as it
	// dates the start (hack/coldphases reads these lines).
	a.logs.waitLine(t, "ca certificate verified")
	if lines := a.logs.lines(); len(lines) == 0 || lines[0]["msg"] != "configuration read" {
		t.Errorf("the first debug line is not \"configuration read\": %v", lines[:min(len(lines), 1)])
	}
	caToken, err := os.ReadFile(filepath.Join(ca.dir, "token"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(token, caToken, 0o600); err != nil {
		t.Fatal(err)
	}
	identity(t, a.socket)
	if n := proxy.accepted.Load(); n != 1 {
		t.Fatalf("%d connections to the CA, want 1: the CSR did not use the connection opened at start", n)
	}
}
