package cache

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/testpki"
)

// hostileFiles makes, in a new directory, the paths a client of the
// socket could name to exhaust or block the agent: a FIFO no one writes,
// a symbolic link to /dev/zero (an endless character device), a file one
// byte over maxPEMFileSize, and a directory. Each maps to the reason it
// must be refused for and a word its error must hold.
func hostileFiles(t *testing.T) map[string][2]string {
	t.Helper()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.pem")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero.pem")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(zero); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("/dev/zero is not a character device here: %v", err)
	}
	big := filepath.Join(dir, "big.pem")
	// Valid PEM at the start, so only the size can be why it is refused.
	content := append(testpki.NewRoot(t, "big").CertPEM, make([]byte, maxPEMFileSize)...)
	if err := os.WriteFile(big, content, 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "dir.pem")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	return map[string][2]string{
		fifo: {FileNotRegular, "FIFO"},
		zero: {FileNotRegular, "character device"},
		big:  {FileTooLarge, "larger than"},
		sub:  {FileNotRegular, "directory"},
	}
}

// TestLoadersRefuseNonRegularAndLargeFiles: every loader refuses a FIFO
// (without blocking on it), a device, a directory and an oversized file,
// with a *FileError that names the file, its type or size, and a hint.
func TestLoadersRefuseNonRegularAndLargeFiles(t *testing.T) {
	good := testpki.NewRoot(t, "root").IssueLeaf(t, testpki.LeafOptions{})
	keyPath := writeFile(t, t.TempDir(), "tls.key", good.KeyPEM)
	certPath := writeFile(t, t.TempDir(), "tls.crt", good.ChainPEM)
	for path, want := range hostileFiles(t) {
		loaders := map[string]func() error{
			"roots":         func() error { _, _, err := loadRoots("file-root:"+path, path); return err },
			"roots or none": func() error { _, _, err := loadRootsOrNone("file-root:"+path, path); return err },
			"system roots":  func() error { _, _, err := loadSystemRoots(SystemRootName, []string{path}); return err },
			"pair chain":    func() error { _, _, err := loadKeyPair("file-cert:x", path, keyPath, time.Now()); return err },
			"pair key":      func() error { _, _, err := loadKeyPair("file-cert:x", certPath, path, time.Now()); return err },
			"crl":           func() error { _, _, err := loadCRLFile("crl", path); return err },
		}
		for lname, load := range loaders {
			t.Run(filepath.Base(path)+"/"+lname, func(t *testing.T) {
				if lname == "system roots" && want[0] != FileTooLarge {
					// The system bundle is the first candidate that is a
					// regular file; others are skipped, not read.
					return
				}
				done := make(chan error, 1)
				go func() { done <- load() }()
				var err error
				select {
				case err = <-done:
				case <-time.After(waitLimit):
					t.Fatal("the loader blocked on the file")
				}
				var fe *FileError
				if !errors.As(err, &fe) {
					t.Fatalf("err = %v, want a *FileError", err)
				}
				if fe.Reason != want[0] || fe.Path != path {
					t.Fatalf("refused %s for %q, want %s for %s (%v)", fe.Path, fe.Reason, path, want[0], err)
				}
				if !strings.Contains(err.Error(), want[1]) || !strings.Contains(err.Error(), path) || fe.Hint() == "" {
					t.Fatalf("error %q does not say %q and name the file, or no hint", err, want[1])
				}
			})
		}
	}
}

// TestFileNamesRefuseHostileFiles: a stream that names a FIFO, a device
// or an oversized file in file-root: or file-cert: gets each refused with
// its reason, and the file loop goes on serving the other names, a name
// asked for afterwards included.
func TestFileNamesRefuseHostileFiles(t *testing.T) {
	h := newFileHarness(t, nil)
	good := h.leaf(testpki.LeafOptions{})
	dir := t.TempDir()
	certPath := writeFile(t, dir, "tls.crt", good.ChainPEM)
	keyPath := writeFile(t, dir, "tls.key", good.KeyPEM)
	okRoot := FileRootPrefix + writeFile(t, dir, "ca.crt", h.root.CertPEM)

	hostile := hostileFiles(t)
	names := []string{okRoot}
	want := map[string]string{}
	for path, w := range hostile {
		names = append(names, FileRootPrefix+path, certName(path, keyPath), certName(certPath, path))
		want[FileRootPrefix+path], want[certName(path, keyPath)], want[certName(certPath, path)] = w[0], w[0], w[0]
	}
	h.mgr.SetDemand(names)
	h.waitSecret(okRoot, func(*Secret) bool { return true })
	h.eventually("every hostile name to be refused", func() bool {
		errs := h.mgr.NameErrors()
		for name, reason := range want {
			if !strings.Contains(errs[name], reason) {
				return false
			}
		}
		return true
	})
	for name := range want {
		if _, ok := h.mgr.Snapshot().Get(name); ok {
			t.Fatalf("%s is served", name)
		}
	}
	if n := h.fileErrors(FileNotRegular) + h.fileErrors(FileTooLarge); n != float64(len(want)) {
		t.Fatalf("counted %v refusals, want %d", n, len(want))
	}
	// The loop is not stuck: a pair asked for now is served.
	pair := certName(certPath, keyPath)
	h.mgr.SetDemand(append(names, pair))
	h.waitServing(pair, good)
}

// TestMountedAndTrustFilesRefuseHostileFiles: the mounted workload
// certificate and the trust anchors file are read by the same bounded
// reader: a key that is /dev/zero and anchors that are a FIFO are refused
// with their reasons, and nothing is served from them.
func TestMountedAndTrustFilesRefuseHostileFiles(t *testing.T) {
	var fifo, zero string
	for path, w := range hostileFiles(t) {
		switch w[1] {
		case "FIFO":
			fifo = path
		case "character device":
			zero = path
		}
	}
	dir := t.TempDir()
	root := testpki.NewRoot(t, "mounted root")
	l := root.IssueLeaf(t, testpki.LeafOptions{})
	writeFile(t, dir, MountedCertChainFile, l.ChainPEM)
	writeFile(t, dir, MountedRootCertFile, root.CertPEM)
	if err := os.Symlink(zero, filepath.Join(dir, MountedKeyFile)); err != nil {
		t.Fatal(err)
	}
	h := newFileHarness(t, func(c *Config) { c.MountedCertDir, c.Signer, c.TrustAnchorsFile = dir, nil, fifo })
	h.eventually("the /dev/zero key to be refused", func() bool {
		return strings.Contains(h.mgr.NameErrors()[WorkloadCertName], FileNotRegular)
	})
	h.eventually("the FIFO anchors to be refused", func() bool {
		for _, e := range h.logs.FilterMessage("trust file refused; nothing loaded from it yet").All() {
			if e.ContextMap()["reason"] == FileNotRegular && e.ContextMap()["file"] == fifo {
				return true
			}
		}
		return false
	})
	if _, ok := h.mgr.Snapshot().Get(WorkloadCertName); ok {
		t.Fatal("default is served from a /dev/zero key")
	}
}
