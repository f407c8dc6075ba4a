package testtools

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// recorder is a testing.TB that records Fatalf and Skipf instead of
// stopping the goroutine.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper()                      {}
func (r *recorder) Fatalf(f string, args ...any) { r.fatal = fmt.Sprintf(f, args...) }
func (r *recorder) Skipf(f string, args ...any)  { r.skip = fmt.Sprintf(f, args...) }

func writeTool(t *testing.T, dir, name string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNeedFindsToolInToolsDirBeforePath(t *testing.T) {
	tools, bin := t.TempDir(), t.TempDir()
	want := writeTool(t, tools, "sometool", 0o755)
	writeTool(t, bin, "sometool", 0o755)
	t.Setenv(DirEnv, tools)
	t.Setenv("PATH", bin)
	r := &recorder{TB: t}
	if got := Need(r, "sometool", "make tools"); got != want {
		t.Fatalf("Need = %q, want %q", got, want)
	}
	if r.fatal != "" || r.skip != "" {
		t.Fatalf("unexpected fatal %q skip %q", r.fatal, r.skip)
	}
}

func TestNeedFallsBackToPath(t *testing.T) {
	tools, bin := t.TempDir(), t.TempDir()
	// Not executable in the tools dir: ignored.
	writeTool(t, tools, "sometool", 0o644)
	want := writeTool(t, bin, "sometool", 0o755)
	t.Setenv(DirEnv, tools)
	t.Setenv("PATH", bin)
	if got := Need(&recorder{TB: t}, "sometool", "make tools"); got != want {
		t.Fatalf("Need = %q, want %q", got, want)
	}
}

func TestNeedMissingToolFailsInCIAndSkipsElsewhere(t *testing.T) {
	for _, tc := range []struct {
		ci        string
		wantFatal bool
	}{{"true", true}, {"", false}, {"false", false}} {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			t.Setenv(DirEnv, t.TempDir())
			t.Setenv("PATH", t.TempDir())
			t.Setenv("CI", tc.ci)
			r := &recorder{TB: t}
			if got := Need(r, "nosuchtool", "make tools"); got != "" {
				t.Fatalf("Need = %q, want empty", got)
			}
			msg := r.skip
			if tc.wantFatal {
				msg = r.fatal
				if r.skip != "" {
					t.Fatalf("skipped in CI: %q", r.skip)
				}
			} else if r.fatal != "" {
				t.Fatalf("failed outside CI: %q", r.fatal)
			}
			if !strings.Contains(msg, "nosuchtool") || !strings.Contains(msg, "make tools") {
				t.Fatalf("message %q does not name the tool and the install command", msg)
			}
		})
	}
}

func TestDirDefaultsToHomeCache(t *testing.T) {
	env := map[string]string{"HOME": "/home/u"}
	if got, want := Dir(func(k string) string { return env[k] }), "/home/u/.cache/sdsagent-tools"; got != want {
		t.Fatalf("Dir = %q, want %q", got, want)
	}
	env[DirEnv] = "/x/tools"
	if got := Dir(func(k string) string { return env[k] }); got != "/x/tools" {
		t.Fatalf("Dir = %q, want /x/tools", got)
	}
}
