package cache

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// faultMode is how faultFS fails from its chosen step on.
type faultMode int

const (
	// faultENOSPC fails the chosen step only, as a full disk does; a
	// file write leaves half the data behind.
	faultENOSPC faultMode = iota
	// faultEROFS fails the chosen step and every later one, as a file
	// system remounted read-only does.
	faultEROFS
	// faultCrash makes the chosen step and every later one do nothing:
	// the process died just before it.
	faultCrash
)

func (m faultMode) String() string {
	return [...]string{"ENOSPC", "EROFS", "crash"}[m]
}

var errCrashed = errors.New("process died")

// faultFS is outputFS on the real file system (without fsync) that fails
// or stops at one step, counting from 1, and calls after once each step
// took effect.
type faultFS struct {
	at    int // 0: never fails
	mode  faultMode
	after func(op string)

	// newChain marks the new version: swapped is set once ..data names
	// a directory whose chain it is.
	newChain []byte

	n       int
	ops     []string
	failed  string // the step that failed
	swapped bool
}

func (f *faultFS) step(op string, do func() error) error {
	f.n++
	f.ops = append(f.ops, op)
	if f.at > 0 && f.n >= f.at {
		if f.n == f.at {
			f.failed = op
		}
		switch {
		case f.mode == faultCrash:
			return errCrashed
		case f.mode == faultEROFS:
			return fmt.Errorf("%s: %w", op, syscall.EROFS)
		case f.n == f.at:
			return fmt.Errorf("%s: %w", op, syscall.ENOSPC)
		}
	}
	if err := do(); err != nil {
		return err
	}
	if f.after != nil {
		f.after(op)
	}
	return nil
}

func (f *faultFS) MkdirTemp(dir, pattern string) (path string, err error) {
	err = f.step("mkdir "+pattern, func() error {
		path, err = osFS{}.MkdirTemp(dir, pattern)
		return err
	})
	return path, err
}

func (f *faultFS) WriteFile(path string, data []byte, mode os.FileMode) error {
	op := "write " + filepath.Base(path)
	if f.at == f.n+1 && f.mode == faultENOSPC {
		// A full disk takes part of the data, then fails.
		_ = os.WriteFile(path, data[:len(data)/2], mode)
	}
	// No fsync: the test is about what readers see, and syncs are slow.
	return f.step(op, func() error {
		if err := os.WriteFile(path, data, mode); err != nil {
			return err
		}
		return os.Chmod(path, mode)
	})
}

func (f *faultFS) Symlink(target, path string) error {
	return f.step("symlink "+filepath.Base(path), func() error { return os.Symlink(target, path) })
}

func (f *faultFS) Rename(from, to string) error {
	return f.step("rename "+filepath.Base(from)+" "+filepath.Base(to), func() error {
		if err := os.Rename(from, to); err != nil {
			return err
		}
		if filepath.Base(to) == outputDataLink && f.newChain != nil {
			chain, _ := os.ReadFile(filepath.Join(to, OutputCertChainFile))
			f.swapped = f.swapped || bytes.Equal(chain, f.newChain)
		}
		return nil
	})
}

func (f *faultFS) RemoveAll(path string) error {
	return f.step("remove "+filepath.Base(path), func() error { return os.RemoveAll(path) })
}

func (f *faultFS) SyncDir(dir string) error {
	return f.step("sync "+filepath.Base(dir), func() error { return nil })
}

// outputVersion is one complete set of the three files.
type outputVersion struct {
	name  string
	files map[string][]byte
}

func newOutputVersion(t *testing.T, name string) outputVersion {
	t.Helper()
	root := testpki.NewRoot(t, name+" root")
	return outputVersion{name: name, files: outputFiles(root, root.IssueLeaf(t, testpki.LeafOptions{}))}
}

// shownVersion returns which of versions dir shows, "none" if no file
// exists and none may, or an error if what a reader loads is not one
// complete version with its modes.
func shownVersion(dir string, noneOK bool, versions ...outputVersion) (string, error) {
	chainPath, keyPath := filepath.Join(dir, OutputCertChainFile), filepath.Join(dir, OutputKeyFile)
	got := map[string][]byte{}
	for _, name := range outputFileNames {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err == nil {
			got[name] = data
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
	}
	if len(got) == 0 && noneOK {
		return "none", nil
	}
	if _, err := tls.LoadX509KeyPair(chainPath, keyPath); err != nil {
		return "", fmt.Errorf("tls.LoadX509KeyPair: %w", err)
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != OutputKeyMode {
		return "", fmt.Errorf("key file: %v (mode %v)", err, fi)
	}
	for _, v := range versions {
		if bytes.Equal(joinFiles(got), joinFiles(v.files)) {
			return v.name, nil
		}
	}
	return "", errors.New("the files are not one complete version")
}

// writePlain writes files as agents before the versioned layout did.
func writePlain(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		mode := OutputCertMode
		if name == OutputKeyFile {
			mode = OutputKeyMode
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, mode); err != nil {
			t.Fatal(err)
		}
	}
}

// newTestWriter returns a writer of src into dir on fsys.
func newTestWriter(t *testing.T, dir string, src *Store, fsys outputFS) *OutputWriter {
	t.Helper()
	w, err := NewOutputWriter(OutputConfig{Dir: dir, Source: src, fs: fsys})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func storeOf(t *testing.T, v outputVersion) *Store {
	t.Helper()
	chain, key, root := v.files[OutputCertChainFile], v.files[OutputKeyFile], v.files[OutputRootCertFile]
	s := NewStore(clock.Real())
	s.Update([]*Secret{
		{Name: WorkloadCertName, Kind: TLSCertificate, CertChainPEM: chain, PrivateKeyPEM: key},
		{Name: RootCertName, Kind: ValidationContext, TrustedCAPEM: root},
	}, nil)
	return s
}

// TestOutputWriterFaultAtEveryStep replaces v1 by v2 with a file system
// that fails (ENOSPC once, EROFS from then on) or stops (the process
// dies) at each step of the write in turn. After every step that took
// effect, and after the write, a reader loads one complete version; a
// failure before the swap leaves v1 and no partial directory; and a
// later write (the agent retrying or restarted) shows v2 in a clean
// layout. It starts from the versioned layout, from plain files written by
// an older agent, and from an empty directory.
func TestOutputWriterFaultAtEveryStep(t *testing.T) {
	v1, v2 := newOutputVersion(t, "v1"), newOutputVersion(t, "v2")
	starts := []struct {
		name  string
		setup func(t *testing.T, dir string)
		none  bool // no version before the write
	}{
		{"versioned layout", func(t *testing.T, dir string) {
			if err := newTestWriter(t, dir, storeOf(t, v1), &faultFS{}).write(); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"plain files of an older agent", func(t *testing.T, dir string) {
			writePlain(t, dir, v1.files)
			// What an older agent's interrupted write left behind.
			writePlain(t, dir, map[string][]byte{"." + OutputKeyFile + ".tmp-12345": []byte("partial")})
		}, false},
		{"empty directory", func(*testing.T, string) {}, true},
	}
	for _, start := range starts {
		t.Run(start.name, func(t *testing.T) {
			newDir := func(t *testing.T) string {
				dir := t.TempDir()
				start.setup(t, dir)
				writePlain(t, dir, map[string][]byte{"notes.txt": []byte("not the agent's")})
				return dir
			}
			// The steps of a write that nothing disturbs.
			count := &faultFS{}
			if err := newTestWriter(t, newDir(t), storeOf(t, v2), count).write(); err != nil {
				t.Fatal(err)
			}
			if len(count.ops) < 5 {
				t.Fatalf("a write took only the steps %v", count.ops)
			}
			t.Logf("%d steps: %s", len(count.ops), strings.Join(count.ops, ", "))
			for at := 1; at <= len(count.ops); at++ {
				for _, mode := range []faultMode{faultENOSPC, faultEROFS, faultCrash} {
					t.Run(fmt.Sprintf("%s at step %d", mode, at), func(t *testing.T) {
						faultAt(t, newDir(t), at, mode, start.none, v1, v2)
					})
				}
			}
		})
	}
}

// faultAt runs one write of v2 over v1 in dir that fails at step at.
func faultAt(t *testing.T, dir string, at int, mode faultMode, none bool, v1, v2 outputVersion) {
	before, err := shownVersion(dir, none, v1)
	if err != nil {
		t.Fatalf("before the write: %v", err)
	}
	var seen []string
	fsys := &faultFS{at: at, mode: mode, newChain: v2.files[OutputCertChainFile]}
	fsys.after = func(op string) {
		got, err := shownVersion(dir, none, v1, v2)
		if err != nil {
			t.Fatalf("after step %d (%s) of %v: %v", fsys.n, op, fsys.ops, err)
		}
		if len(seen) == 0 || seen[len(seen)-1] != got {
			seen = append(seen, got)
		}
	}
	err = newTestWriter(t, dir, storeOf(t, v2), fsys).write()
	if fsys.failed == "" {
		t.Fatalf("the write took fewer than %d steps: %v", at, fsys.ops)
	}
	after, verr := shownVersion(dir, none, v1, v2)
	if verr != nil {
		t.Fatalf("after %s at step %d (%s): %v", mode, at, fsys.failed, verr)
	}
	// Readers move forward once: before, [before,] v2.
	if len(seen) > 2 || (len(seen) == 2 && (seen[0] != before || seen[1] != v2.name)) || (len(seen) == 1 && seen[0] != before && seen[0] != v2.name) {
		t.Fatalf("readers saw %v in turn", seen)
	}
	if !fsys.swapped {
		if after != before {
			t.Fatalf("the write failed before the swap but the directory shows %s, not %s", after, before)
		}
		if mode != faultCrash && err == nil {
			t.Fatalf("%s at step %d (%s): the write reported no error", mode, at, fsys.failed)
		}
	} else if after != v2.name {
		t.Fatalf("..data was swapped but the directory shows %s", after)
	}
	if mode == faultENOSPC && !strings.HasPrefix(fsys.failed, "remove") {
		// The failed write tidied up: at most the version ..data
		// names, no partial one.
		var versions []string
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if isVersionDir(e.Name()) || e.Name() == outputDataTmpLink {
				versions = append(versions, e.Name())
			}
		}
		if len(versions) > 1 {
			t.Fatalf("after ENOSPC at step %d (%s) the directory keeps %v", at, fsys.failed, versions)
		}
	}

	// The agent retries (or a restarted one writes) with a working disk.
	if err := newTestWriter(t, dir, storeOf(t, v2), &faultFS{}).write(); err != nil {
		t.Fatalf("the next write: %v", err)
	}
	if got, err := shownVersion(dir, false, v2); err != nil || got != v2.name {
		t.Fatalf("after the next write: %s, %v", got, err)
	}
	checkLayout(t, dir, "notes.txt")
}

// TestOutputWriterMovesPlainFilesWithoutChangingThem starts from plain
// files that do not even match (an older agent hit ENOSPC between its two
// renames): moving to the versioned layout shows exactly the same bytes
// after every step, and only the swap to the new version changes them.
func TestOutputWriterMovesPlainFilesWithoutChangingThem(t *testing.T) {
	v1, v2 := newOutputVersion(t, "v1"), newOutputVersion(t, "v2")
	dir := t.TempDir()
	torn := map[string][]byte{OutputCertChainFile: v1.files[OutputCertChainFile], OutputKeyFile: v2.files[OutputKeyFile], OutputRootCertFile: v1.files[OutputRootCertFile]}
	writePlain(t, dir, torn)
	var shown [][]byte
	fsys := &faultFS{}
	fsys.after = func(string) {
		st, err := readOutputState(dir)
		if err != nil {
			t.Fatal(err)
		}
		if j := joinFiles(st.visible); len(shown) == 0 || !bytes.Equal(shown[len(shown)-1], j) {
			shown = append(shown, j)
		}
	}
	if err := newTestWriter(t, dir, storeOf(t, v2), fsys).write(); err != nil {
		t.Fatal(err)
	}
	if len(shown) != 2 || !bytes.Equal(shown[0], joinFiles(torn)) || !bytes.Equal(shown[1], joinFiles(v2.files)) {
		t.Fatalf("readers saw %d contents in turn, want the old files then v2", len(shown))
	}
	checkLayout(t, dir)
}

func TestOutputWriterRefusesForeignDataLink(t *testing.T) {
	tests := []struct {
		name  string
		setup func(dir string) error
		want  string
	}{
		{"symlink elsewhere", func(dir string) error { return os.Symlink("/etc", filepath.Join(dir, outputDataLink)) }, "not to a version directory"},
		{"directory", func(dir string) error { return os.Mkdir(filepath.Join(dir, outputDataLink), 0o755) }, "not a symlink"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := tt.setup(dir); err != nil {
				t.Fatal(err)
			}
			err := newTestWriter(t, dir, storeOf(t, newOutputVersion(t, "v")), nil).write()
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "remove it") {
				t.Fatalf("write = %v, want an error saying %q and what to do", err, tt.want)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Fatalf("the refused write left %d entries", len(entries))
			}
		})
	}
}

// TestOutputWriterKeepsFilesTheSnapshotLacks checks that a snapshot
// without "default" (roots only) carries the previous chain and key into
// the new version, as the plain-file writer left them in place.
func TestOutputWriterKeepsFilesTheSnapshotLacks(t *testing.T) {
	v1 := newOutputVersion(t, "v1")
	dir := t.TempDir()
	if err := newTestWriter(t, dir, storeOf(t, v1), nil).write(); err != nil {
		t.Fatal(err)
	}
	root2 := testpki.NewRoot(t, "root 2")
	s := NewStore(clock.Real())
	s.Update([]*Secret{{Name: RootCertName, Kind: ValidationContext, TrustedCAPEM: root2.CertPEM, Certs: []*x509.Certificate{root2.Cert}}}, nil)
	if err := newTestWriter(t, dir, s, nil).write(); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{OutputCertChainFile: v1.files[OutputCertChainFile], OutputKeyFile: v1.files[OutputKeyFile], OutputRootCertFile: root2.CertPEM}
	if got, err := shownVersion(dir, false, outputVersion{"mixed", want}); err != nil || got != "mixed" {
		t.Fatalf("shows %s, %v", got, err)
	}
	checkLayout(t, dir)
}
