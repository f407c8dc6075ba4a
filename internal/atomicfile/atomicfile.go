// Package atomicfile writes files so that a reader, or a crash, never
// sees one half written: through a synced temporary file in the same
// directory, then a rename (or a hard link, for a file that must not
// exist yet), then a sync of the directory. It is the one home of this
// write for the dev CA's state (internal/devca) and the output directory
// (cache).
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile writes data with mode perm (whatever the umask) to dir/name,
// replacing it if present, so readers see the old content or the new,
// never a partial file.
func WriteFile(dir, name string, data []byte, perm os.FileMode) error {
	tmp, err := writeTemp(dir, name, data, perm)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		_ = os.Remove(tmp) // the rename error is the one to report
		return fmt.Errorf("write %s: %w", name, err)
	}
	return SyncDir(dir)
}

// WriteNew is WriteFile for a file that must not exist yet: the complete
// temporary file is hard-linked to its name, which fails, leaving the
// existing file alone, if the name is taken. The error then wraps
// fs.ErrExist.
func WriteNew(dir, name string, data []byte, perm os.FileMode) error {
	tmp, err := writeTemp(dir, name, data, perm)
	if err != nil {
		return err
	}
	linkErr := os.Link(tmp, filepath.Join(dir, name))
	if err := os.Remove(tmp); err != nil && linkErr == nil {
		return fmt.Errorf("write %s: remove temporary file: %w", name, err)
	}
	if errors.Is(linkErr, fs.ErrExist) {
		return fmt.Errorf("write %s: %w; refusing to overwrite it", name, fs.ErrExist)
	}
	if linkErr != nil {
		return fmt.Errorf("write %s: %w", name, linkErr)
	}
	return SyncDir(dir)
}

// Create writes data to a new file at path (failing if it exists) with
// mode perm whatever the umask, and syncs it. It is the first step of a
// write whose rename the caller makes itself.
func Create(path string, data []byte, perm os.FileMode) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Sync()
}

// writeTemp writes data with mode perm to a synced temporary file in dir
// named after name (".name.tmp-*"), and returns its path.
func writeTemp(dir, name string, data []byte, perm os.FileMode) (_ string, err error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close() // already failing; the first error is the one to report
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	if _, err := f.Write(data); err != nil {
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("write %s: sync: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write %s: close: %w", name, err)
	}
	return tmp, nil
}

// SyncDir makes the entries created and renamed in dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	if err := d.Sync(); err != nil {
		_ = d.Close() // the sync error is the one to report
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	if err := d.Close(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
