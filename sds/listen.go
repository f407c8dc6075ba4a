package sds

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// socketDirMode is the mode of a socket directory Listen creates: others
// must not even see which sockets it holds.
const socketDirMode os.FileMode = 0o750

// liveProbeTimeout bounds the connect used to tell a stale socket file
// from one a running server still answers on.
const liveProbeTimeout = time.Second

// Listen listens on the Unix socket path with the file mode mode. It
// creates the socket's directory with mode 0750 if it does not exist
// (an existing directory is left as it is), and removes a stale socket
// left by a previous run. It refuses to remove anything that is not a
// socket, or a socket on which a live server answers.
func Listen(path string, mode os.FileMode) (net.Listener, error) {
	if err := checkSocketPath(path); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, socketDirMode); err != nil {
			return nil, fmt.Errorf("listen: create socket directory: %w", err)
		}
		// MkdirAll's mode is filtered by the umask; set it exactly.
		if err := os.Chmod(dir, socketDirMode); err != nil {
			return nil, fmt.Errorf("listen: set socket directory mode: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("listen: socket directory: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if err := os.Chmod(path, mode); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("listen: set socket mode: %w", err)
	}
	return lis, nil
}

// maxSocketPath is the longest Unix socket path Linux accepts: sun_path
// holds 108 bytes, the last for the terminating NUL.
const maxSocketPath = 107

// checkSocketPath refuses a path that bind would refuse, before anything
// is created for it.
func checkSocketPath(path string) error {
	switch {
	case path == "":
		return errors.New("empty socket path")
	case len(path) > maxSocketPath:
		return fmt.Errorf("socket path is %d bytes long, over the Unix limit of %d bytes (108 with the terminating NUL): choose a shorter --socket: %s",
			len(path), maxSocketPath, path)
	}
	return nil
}

// removeStaleSocket removes the socket file at path unless a server
// answers on it. It refuses to remove a file that is not a socket.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listen: check existing socket: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("listen: refusing to remove %s: not a socket (mode %s)", path, fi.Mode())
	}
	conn, err := net.DialTimeout("unix", path, liveProbeTimeout)
	if err == nil {
		_ = conn.Close()
		return fmt.Errorf("listen: %s is in use by a running server", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("listen: cannot tell whether %s is stale: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("listen: remove stale socket: %w", err)
	}
	return nil
}

// removeSocket removes the socket file at path if it is still there and
// still a socket.
func removeSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove socket: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove socket: %w", err)
	}
	return nil
}
