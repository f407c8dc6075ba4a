package pki

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadCARootFileNamesTheFileOnce checks the errors both CA clients
// show: the path once, and why.
func TestReadCARootFileNamesTheFileOnce(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	_, err := ReadCARootFile(missing)
	if !errors.Is(err, fs.ErrNotExist) || strings.Count(err.Error(), missing) != 1 {
		t.Errorf("missing file: %v; want fs.ErrNotExist naming %s once", err, missing)
	}
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadCARootFile(empty); !errors.Is(err, ErrNoCertificates) || !strings.Contains(err.Error(), "read CA root file "+empty) {
		t.Errorf("empty file: %v; want ErrNoCertificates naming the file", err)
	}
}
