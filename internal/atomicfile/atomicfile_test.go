package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// entries returns the names in dir, to check no temporary file is left.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func check(t *testing.T, path string, want string, perm os.FileMode) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil || string(got) != want {
		t.Fatalf("%s = %q, %v; want %q", path, got, err, want)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != perm {
		t.Fatalf("%s mode = %v, %v; want %v", path, st.Mode().Perm(), err, perm)
	}
}

func TestWriteFileReplacesWithModeWhateverTheUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	if err := WriteFile(dir, "root.pem", []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	check(t, filepath.Join(dir, "root.pem"), "one", 0o644)
	if err := WriteFile(dir, "root.pem", []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	check(t, filepath.Join(dir, "root.pem"), "two", 0o600)
	if got := entries(t, dir); len(got) != 1 {
		t.Fatalf("dir holds %q, want only root.pem", got)
	}
}

func TestWriteNewRefusesAnExistingFile(t *testing.T) {
	dir := t.TempDir()
	if err := WriteNew(dir, "token", []byte("first"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := WriteNew(dir, "token", []byte("second"), 0o600)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second WriteNew = %v, want fs.ErrExist", err)
	}
	check(t, filepath.Join(dir, "token"), "first", 0o600)
	if got := entries(t, dir); len(got) != 1 {
		t.Fatalf("dir holds %q, want only token", got)
	}
}

func TestWriteFileFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	// A directory in the way makes the rename fail after the temporary
	// file is complete.
	if err := os.Mkdir(filepath.Join(dir, "in-the-way"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "in-the-way", "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(dir, "in-the-way", []byte("data"), 0o600); err == nil {
		t.Fatal("WriteFile over a non-empty directory succeeded")
	}
	if got := entries(t, dir); len(got) != 1 {
		t.Fatalf("dir holds %q, want only in-the-way: a temporary file was left", got)
	}
}

func TestCreateIsExclusive(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "cert.pem")
	if err := Create(path, []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	check(t, path, "a", 0o644)
	if err := Create(path, []byte("b"), 0o644); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Create = %v, want fs.ErrExist", err)
	}
	check(t, path, "a", 0o644)
}
