package peercred_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/peercred"
	"github.com/sdsagent/sdsagent/internal/peercred/peercredtest"
)

// childSocketEnv makes the test binary a client: it connects to the
// socket named there, prints what the server sent until EOF, and exits.
const childSocketEnv = "PEERCRED_TEST_CHILD_SOCKET"

const waitLimit = 20 * time.Second

// greeting is what the test server writes to every connection it gets.
const greeting = "hello from the server"

func TestMain(m *testing.M) {
	if path := os.Getenv(childSocketEnv); path != "" {
		os.Exit(child(path))
	}
	goleak.VerifyTestMain(m)
}

// child connects to path and prints "got <n> bytes: <data>".
func child(path string) int {
	conn, err := net.Dial("unix", path)
	if err != nil {
		fmt.Printf("dial: %v\n", err)
		return 1
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(waitLimit))
	data, err := io.ReadAll(conn)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		fmt.Printf("read: %v\n", err)
		return 1
	}
	fmt.Printf("got %d bytes: %s\n", len(data), data)
	return 0
}

// server listens on a 0666 socket in a world-readable directory, guards
// it with cfg, and writes greeting to every connection Accept returns.
func server(t *testing.T, cfg peercred.Config) (*peercred.Listener, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "pc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	pl, err := peercred.Wrap(lis, cfg)
	if err != nil {
		lis.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := pl.Accept()
			if err != nil {
				return
			}
			_, _ = conn.Write([]byte(greeting))
			_ = conn.Close()
		}
	}()
	t.Cleanup(func() { pl.Close(); <-done })
	return pl, path
}

// wantRefused checks that l has refused n connections. A refusal is
// recorded before its connection is closed, so a client that saw EOF
// finds it counted.
func wantRefused(t *testing.T, l *peercred.Listener, n uint64) {
	t.Helper()
	if got := l.Stats().Refused; got != n {
		t.Fatalf("refused = %d, want %d", got, n)
	}
}

func TestRealCallersUnderOtherUIDsAndGIDs(t *testing.T) {
	bin := peercredtest.Binary(t)
	const allowedUID, allowedGID, other = 4201, 4302, 4999
	core, logs := observer.New(zap.InfoLevel)
	refused := prometheus.NewCounter(prometheus.CounterOpts{Name: "refused_total", Help: "test"})
	lis, socket := server(t, peercred.Config{
		UIDs: []uint32{allowedUID}, GIDs: []uint32{allowedGID},
		Logger: zap.New(core), Refused: refused,
	})

	tests := []struct {
		name     string
		uid, gid uint32
		allowed  bool
	}{
		{"allowed uid", allowedUID, other, true},
		{"allowed gid", other, allowedGID, true},
		{"neither", other, other, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := lis.Stats().Refused
			pid, out := peercredtest.Run(t, bin, tc.uid, tc.gid, childSocketEnv+"="+socket)
			if tc.allowed {
				if want := fmt.Sprintf("got %d bytes: %s", len(greeting), greeting); out != want {
					t.Fatalf("child output %q, want %q", out, want)
				}
				if got := lis.Stats().Refused; got != before {
					t.Fatalf("refused = %d after an allowed caller, want %d", got, before)
				}
				return
			}
			if out != "got 0 bytes:" {
				t.Fatalf("refused child output %q: it must be closed before any byte", out)
			}
			wantRefused(t, lis, before+1)
			last := lis.Stats().LastRefused
			if last == nil || last.UID != tc.uid || last.GID != tc.gid || last.PID != int32(pid) {
				t.Fatalf("last refused = %+v, want uid %d gid %d pid %d", last, tc.uid, tc.gid, pid)
			}
			if got := testutil.ToFloat64(refused); got != float64(before+1) {
				t.Fatalf("refused counter = %v, want %d", got, before+1)
			}
			entries := logs.FilterMessage("sds connection refused").AllUntimed()
			if len(entries) == 0 {
				t.Fatal("no refusal log line")
			}
			fields := entries[len(entries)-1].ContextMap()
			if fields["uid"] != uint32(tc.uid) || fields["gid"] != uint32(tc.gid) || fields["pid"] != int32(pid) {
				t.Fatalf("log line %v, want uid %d gid %d pid %d", fields, tc.uid, tc.gid, pid)
			}
		})
	}
}

func TestRefusalLogIsRateLimited(t *testing.T) {
	if os.Getuid() == 4242 {
		t.Skip("the test allows uid 4242 only, and runs as it")
	}
	clk := clocktest.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	core, logs := observer.New(zap.InfoLevel)
	lis, socket := server(t, peercred.Config{UIDs: []uint32{4242}, Clock: clk, Logger: zap.New(core)})
	connect := func() {
		t.Helper()
		conn, err := net.Dial("unix", socket)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(waitLimit))
		if n, err := io.ReadAll(conn); err != nil || len(n) != 0 {
			t.Fatalf("refused connection read %q, %v; want EOF at once", n, err)
		}
	}
	for i := 1; i <= 3; i++ {
		connect()
		wantRefused(t, lis, uint64(i))
	}
	if n := logs.FilterMessage("sds connection refused").Len(); n != 1 {
		t.Fatalf("%d log lines for 3 refusals within a second, want 1", n)
	}
	clk.Advance(time.Second)
	connect()
	wantRefused(t, lis, 4)
	entries := logs.FilterMessage("sds connection refused").AllUntimed()
	if len(entries) != 2 {
		t.Fatalf("%d log lines, want 2", len(entries))
	}
	if got := entries[1].ContextMap()["suppressed"]; got != uint64(2) {
		t.Fatalf("suppressed = %v, want 2", got)
	}
	if got := entries[1].ContextMap()["uid"]; got != uint32(os.Getuid()) {
		t.Fatalf("uid = %v, want %d", got, os.Getuid())
	}
}

func TestWrapRefusesWhatCannotWork(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	if _, err := peercred.Wrap(tcp, peercred.Config{UIDs: []uint32{1}}); err == nil || !strings.Contains(err.Error(), "Unix socket") {
		t.Fatalf("Wrap(tcp) = %v, want an error naming Unix sockets", err)
	}
	dir, err := os.MkdirTemp("", "pc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	unix, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close()
	if _, err := peercred.Wrap(unix, peercred.Config{}); err == nil || !strings.Contains(err.Error(), "empty allowlist") {
		t.Fatalf("Wrap with no uids or gids = %v, want an error", err)
	}
}

// BenchmarkGet measures reading SO_PEERCRED, the cost the check adds to
// each accepted connection.
func BenchmarkGet(b *testing.B) {
	dir, err := os.MkdirTemp("", "pc")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	lis, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		b.Fatal(err)
	}
	defer lis.Close()
	client, err := net.Dial("unix", lis.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	conn, err := lis.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	for b.Loop() {
		if _, err := peercred.Get(conn); err != nil {
			b.Fatal(err)
		}
	}
}
