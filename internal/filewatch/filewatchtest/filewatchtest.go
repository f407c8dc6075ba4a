// Package filewatchtest replaces files the ways the tools that deliver
// certificates do: Kubernetes' atomic writer (projected volumes, secrets,
// config maps), an editor's rename over the file, and a writer that
// writes in several steps. It is imported only by tests.
package filewatchtest

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// dataDirName and newDataDirName are the names kubelet's AtomicWriter
// uses (pkg/volume/util/atomic_writer.go).
const (
	dataDirName    = "..data"
	newDataDirName = "..data_tmp"
)

// KubeletWrite publishes files (name to content) into dir exactly as
// kubelet's AtomicWriter updates a secret volume: the content goes into a
// new timestamped directory "..<time>", a "..data_tmp" symlink to it is
// renamed over "..data", each user-visible name is a symlink to
// "..data/<name>" (created the first time), and the previous timestamped
// directory is removed. Every call is one atomic swap.
func KubeletWrite(tb testing.TB, dir string, files map[string][]byte) {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	old, _ := os.Readlink(filepath.Join(dir, dataDirName))
	tsDir, err := os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		tb.Fatal(err)
	}
	ts := filepath.Base(tsDir)
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(tsDir, name), content, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	tmp := filepath.Join(dir, newDataDirName)
	if err := os.Symlink(ts, tmp); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, dataDirName)); err != nil {
		tb.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join(dataDirName, name), link); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
			tb.Fatal(err)
		}
	}
}

// RenameOver writes content to a temporary file next to path and renames
// it over path, as editors and careful writers do.
func RenameOver(tb testing.TB, path string, content []byte) {
	tb.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".swp")
	if err := os.WriteFile(tmp, content, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

// WriteInSteps truncates path and writes content in n pieces, pausing
// gap between them, as a slow or naive writer does. Readers in between
// see a half-written file.
func WriteInSteps(tb testing.TB, path string, content []byte, n int, gap time.Duration) {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	step := (len(content) + n - 1) / n
	for i := 0; i < len(content); i += step {
		if i > 0 {
			time.Sleep(gap)
		}
		if _, err := f.Write(content[i:min(i+step, len(content))]); err != nil {
			tb.Fatal(err)
		}
	}
}
