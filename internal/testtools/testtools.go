// Package testtools finds the external programs some tests run (cfssl,
// easyrsa, openssl, bssl-tool). A test never downloads a tool: `make tools`
// or the system's package manager installs it, and the test only looks.
//
// In CI (CI=true) a missing tool fails the test, so a broken install is
// never reported as a pass; elsewhere the test is skipped with the command
// that installs the tool.
package testtools

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// DirEnv names the environment variable holding the directory `make tools`
// installs into. The Makefile passes it to `go test`.
const DirEnv = "SDSAGENT_TOOLS_DIR"

// Dir returns the tools directory: $SDSAGENT_TOOLS_DIR, or the Makefile's
// default $HOME/.cache/sdsagent-tools. It returns "" when neither is known.
func Dir(getenv func(string) string) string {
	if d := getenv(DirEnv); d != "" {
		return d
	}
	if home := getenv("HOME"); home != "" {
		return filepath.Join(home, ".cache", "sdsagent-tools")
	}
	return ""
}

// Find returns the path of the executable name, looked for first in Dir and
// then in PATH, or "" when it is in neither.
func Find(getenv func(string) string, name string) string {
	if d := Dir(getenv); d != "" {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return ""
}

// InCI reports whether the tests run in CI, where a missing tool is an error.
func InCI(getenv func(string) string) bool {
	v := getenv("CI")
	return v == "true" || v == "1"
}

// Need returns the path of the executable name (see Find). When it is
// missing the test fails in CI and is skipped elsewhere; both messages name
// installHint, the command that installs it (e.g. "make tools" or
// "apt-get install easy-rsa").
func Need(t testing.TB, name, installHint string) string {
	t.Helper()
	if p := Find(os.Getenv, name); p != "" {
		return p
	}
	where := "PATH"
	if d := Dir(os.Getenv); d != "" {
		where = d + " or PATH"
	}
	if InCI(os.Getenv) {
		t.Fatalf("%s not found in %s; CI must install it: %s", name, where, installHint)
		return ""
	}
	t.Skipf("%s not found in %s; install it with: %s", name, where, installHint)
	return ""
}
