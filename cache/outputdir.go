// This file is the directory layout OutputWriter writes: kubelet's
// versioned directories behind a ..data symlink, so the files change
// as one unit.

package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sdsagent/sdsagent/internal/atomicfile"
)

// Names of kubelet's projected-volume layout (AtomicWriter), which
// OutputWriter uses so that the three files change as one unit:
//
//	DIR/..2026_12_01_19_30_00.123456789/{cert-chain.pem,key.pem,root-cert.pem}
//	DIR/..data -> ..2026_12_01_19_30_00.123456789
//	DIR/cert-chain.pem -> ..data/cert-chain.pem   (and the other two)
const (
	outputDataLink    = "..data"
	outputDataTmpLink = "..data_tmp"
	// outputVersionLayout names a version directory; MkdirTemp appends
	// a random number, so two writes in one second never collide.
	outputVersionLayout = "..2006_01_02_15_04_05."
	// outputTmpInfix marks a temporary file or symlink next to a
	// user-visible one: ours and those older agents left behind.
	outputTmpInfix = ".tmp-"
)

// outputFileNames are the user-visible files, in the order they are
// listed in logs: the root first, so that its change is read first.
var outputFileNames = [...]string{OutputRootCertFile, OutputKeyFile, OutputCertChainFile}

// outputFS is every change OutputWriter makes to the file system, so that
// tests can fail or stop any step. Reads go to the os package directly.
type outputFS interface {
	// MkdirTemp creates a new directory, mode 0755, as os.MkdirTemp
	// names it.
	MkdirTemp(dir, pattern string) (string, error)
	// WriteFile creates path with mode and data and syncs it.
	WriteFile(path string, data []byte, mode os.FileMode) error
	Symlink(target, path string) error
	Rename(from, to string) error
	RemoveAll(path string) error
	// SyncDir makes the entries created and renamed in dir durable.
	SyncDir(dir string) error
}

// osFS is outputFS on the real file system.
type osFS struct{}

func (osFS) Symlink(target, path string) error { return os.Symlink(target, path) }
func (osFS) Rename(from, to string) error      { return os.Rename(from, to) }
func (osFS) RemoveAll(path string) error       { return os.RemoveAll(path) }
func (osFS) SyncDir(dir string) error          { return atomicfile.SyncDir(dir) }

func (osFS) MkdirTemp(dir, pattern string) (string, error) {
	path, err := os.MkdirTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	// Readable as the directory's plain files were, whatever the umask;
	// the key file keeps its own 0600.
	if err := os.Chmod(path, 0o755); err != nil {
		_ = os.Remove(path)
		return "", err
	}
	return path, nil
}

func (osFS) WriteFile(path string, data []byte, mode os.FileMode) error {
	return atomicfile.Create(path, data, mode)
}

// outputState is what a directory holds, read without changing it.
type outputState struct {
	// visible is the content each user-visible name resolves to now;
	// names that resolve to nothing are absent.
	visible map[string][]byte
	// version is the directory ..data names, empty if none.
	version string
	// plain lists the user-visible names that are regular files, as
	// agents before the versioned layout wrote them.
	plain []string
	// linked reports whether every name in visible is the symlink
	// "..data/<name>".
	linked bool
}

// readOutputState reads dir's layout and content.
func readOutputState(dir string) (*outputState, error) {
	st := &outputState{visible: map[string][]byte{}, linked: true}
	target, err := os.Readlink(filepath.Join(dir, outputDataLink))
	switch {
	case err == nil:
		if !isVersionDir(target) {
			return nil, fmt.Errorf("%s points to %q, not to a version directory of this agent; remove it", filepath.Join(dir, outputDataLink), target)
		}
		st.version = target
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("%s is not a symlink (%w); remove it", filepath.Join(dir, outputDataLink), err)
	}
	for _, name := range outputFileNames {
		path := filepath.Join(dir, name)
		fi, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		switch {
		case fi.Mode().IsRegular():
			st.plain = append(st.plain, name)
			st.linked = false
		case fi.Mode()&fs.ModeSymlink != 0:
			if t, err := os.Readlink(path); err != nil || t != filepath.Join(outputDataLink, name) {
				st.linked = false
			}
		default:
			return nil, fmt.Errorf("%s is a %s, not a file; remove it", path, fi.Mode().Type())
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue // a symlink into a version without this file
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		st.visible[name] = data
	}
	return st, nil
}

// isVersionDir reports whether name is a version directory's: ".."
// followed by the year.
func isVersionDir(name string) bool {
	return len(name) > 2 && strings.HasPrefix(name, "..") && name[2] >= '0' && name[2] <= '9' && !strings.Contains(name, "/")
}

// isOutputTemp reports whether name is a temporary file or symlink next
// to a user-visible one.
func isOutputTemp(name string) bool {
	for _, f := range outputFileNames {
		if strings.HasPrefix(name, "."+f+outputTmpInfix) {
			return true
		}
	}
	return false
}

// outputDir writes versions of the files into one directory.
type outputDir struct {
	dir string
	fs  outputFS
	now func() time.Time
}

// removeStale removes what an interrupted write left: every version
// directory but the one ..data names, ..data_tmp, and temporary files.
// Nothing else in dir is touched.
func (d *outputDir) removeStale(current string) error {
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", d.dir, err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		stale := (isVersionDir(name) && name != current) || name == outputDataTmpLink || isOutputTemp(name)
		if !stale {
			continue
		}
		if err := d.fs.RemoveAll(filepath.Join(d.dir, name)); err != nil {
			errs = append(errs, fmt.Errorf("remove stale %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// publish makes files the directory's content in one step: it writes them
// into a new version directory and swaps ..data to it. Until the swap
// readers see the previous version; after it, the new one. On a failure
// before the swap the new directory is removed and the previous version
// stays. After the swap each user-visible name is made the symlink
// "..data/<name>" (names that did not exist are created before the swap,
// so they appear with it) and the previous version is removed.
//
// A user-visible name that is a regular file (older agents wrote them)
// must already hold what the new version holds for it: migrate does
// that first.
func (d *outputDir) publish(st *outputState, files map[string][]byte) (version string, err error) {
	if err := d.removeStale(st.version); err != nil {
		return "", err
	}
	path, err := d.fs.MkdirTemp(d.dir, d.now().UTC().Format(outputVersionLayout))
	if err != nil {
		return "", fmt.Errorf("create version directory: %w", err)
	}
	version = filepath.Base(path)
	swapped := false
	defer func() {
		if err != nil && !swapped {
			// Best effort: a directory left here is removed by the
			// next write's removeStale.
			_ = d.fs.RemoveAll(filepath.Join(d.dir, outputDataTmpLink))
			_ = d.fs.RemoveAll(path)
		}
	}()
	for _, name := range outputFileNames {
		data, ok := files[name]
		if !ok {
			continue
		}
		mode := OutputCertMode
		if name == OutputKeyFile {
			mode = OutputKeyMode
		}
		if err := d.fs.WriteFile(filepath.Join(path, name), data, mode); err != nil {
			return "", fmt.Errorf("write %s: %w", filepath.Join(version, name), err)
		}
	}
	if err := d.fs.SyncDir(path); err != nil {
		return "", fmt.Errorf("sync %s: %w", version, err)
	}
	// New names dangle until the swap, then appear with the others.
	for _, name := range outputFileNames {
		if _, ok := files[name]; !ok {
			continue
		}
		if _, err := os.Lstat(filepath.Join(d.dir, name)); errors.Is(err, fs.ErrNotExist) {
			if err := d.fs.Symlink(filepath.Join(outputDataLink, name), filepath.Join(d.dir, name)); err != nil {
				return "", fmt.Errorf("link %s: %w", name, err)
			}
		}
	}
	tmp := filepath.Join(d.dir, outputDataTmpLink)
	if err := d.fs.Symlink(version, tmp); err != nil {
		return "", fmt.Errorf("link %s: %w", outputDataTmpLink, err)
	}
	if err := d.fs.Rename(tmp, filepath.Join(d.dir, outputDataLink)); err != nil {
		return "", fmt.Errorf("swap %s: %w", outputDataLink, err)
	}
	swapped = true
	// Readers see the new version. Tidy up even if a step fails: the
	// next write tries again.
	var errs []error
	if err := d.fs.SyncDir(d.dir); err != nil {
		errs = append(errs, fmt.Errorf("sync %s: %w", d.dir, err))
	}
	if err := d.relink(files); err != nil {
		errs = append(errs, err)
	}
	if st.version != "" {
		if err := d.fs.RemoveAll(filepath.Join(d.dir, st.version)); err != nil {
			errs = append(errs, fmt.Errorf("remove previous version %s: %w", st.version, err))
		}
	}
	return version, errors.Join(errs...)
}

// relink makes every name in files the symlink "..data/<name>", each by
// renaming a new symlink over it, and syncs the directory if it changed
// one. ..data must already hold what each name shows, so that no reader
// sees a change.
func (d *outputDir) relink(files map[string][]byte) error {
	changed := false
	for _, name := range outputFileNames {
		if _, ok := files[name]; !ok {
			continue
		}
		path := filepath.Join(d.dir, name)
		want := filepath.Join(outputDataLink, name)
		if t, err := os.Readlink(path); err == nil && t == want {
			continue
		}
		tmp := filepath.Join(d.dir, "."+name+outputTmpInfix+"link")
		if err := d.fs.RemoveAll(tmp); err != nil {
			return fmt.Errorf("link %s: %w", name, err)
		}
		if err := d.fs.Symlink(want, tmp); err != nil {
			return fmt.Errorf("link %s: %w", name, err)
		}
		if err := d.fs.Rename(tmp, path); err != nil {
			_ = d.fs.RemoveAll(tmp)
			return fmt.Errorf("link %s: %w", name, err)
		}
		changed = true
	}
	if !changed {
		return nil
	}
	if err := d.fs.SyncDir(d.dir); err != nil {
		return fmt.Errorf("sync %s: %w", d.dir, err)
	}
	return nil
}

// migrate moves a directory written by an older agent (plain files, or a
// write of this agent interrupted before every name was a symlink) to the
// versioned layout without changing what any name shows: it publishes
// what the names show now as a version, which turns the plain files into
// symlinks to the same content. The caller then publishes the new
// content, which changes all names at once.
func (d *outputDir) migrate(st *outputState) (*outputState, error) {
	if _, err := d.publish(st, st.visible); err != nil {
		return nil, fmt.Errorf("move to the versioned layout: %w", err)
	}
	next, err := readOutputState(d.dir)
	if err != nil {
		return nil, err
	}
	if len(next.plain) > 0 || !bytes.Equal(joinFiles(next.visible), joinFiles(st.visible)) {
		return nil, fmt.Errorf("move to the versioned layout: %s changed while it was moved", d.dir)
	}
	return next, nil
}

// joinFiles returns files' contents in a fixed order, for comparison.
func joinFiles(files map[string][]byte) []byte {
	var b bytes.Buffer
	for _, name := range outputFileNames {
		data, ok := files[name]
		fmt.Fprintf(&b, "%s %t %d\n", name, ok, len(data))
		b.Write(data)
	}
	return b.Bytes()
}
