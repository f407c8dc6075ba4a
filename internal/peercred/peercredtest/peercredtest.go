// Package peercredtest runs a copy of the test binary as another user, so
// that tests can check the socket's peer-credential check with real
// callers. It needs root; without it the test is skipped.
package peercredtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Binary copies the running test binary into a 0755 directory and returns
// its path: go test's build directory is private to its user, and the
// child runs as another. It skips t when not running as root.
func Binary(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: running a client under another uid and gid needs root (CI runs as root)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pcbin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "child")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// Run runs bin as uid:gid with only env set, waits for it, and returns
// its pid and trimmed output. A child that fails fails t.
func Run(t testing.TB, bin string, uid, gid uint32, env ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = env
	cmd.Dir = filepath.Dir(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child as %d:%d: %v\n%s", uid, gid, err, out)
	}
	return cmd.Process.Pid, strings.TrimSpace(string(out))
}
