package sds

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// shortDir returns a new directory short enough for socket paths.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// staleSocket leaves a socket file at path with nobody listening.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestListen(t *testing.T) {
	tests := []struct {
		name    string
		mode    os.FileMode
		prepare func(t *testing.T, path string)
		wantErr string
		// wantKept reports that the file at the path must survive a refusal.
		wantKept bool
	}{
		{name: "new directory", mode: 0o660},
		{name: "owner only", mode: 0o600},
		{name: "stale socket", mode: 0o660, prepare: staleSocket},
		{
			name: "regular file", mode: 0o660, wantErr: "not a socket", wantKept: true,
			prepare: func(t *testing.T, path string) {
				if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "live server", mode: 0o660, wantErr: "in use", wantKept: true,
			prepare: func(t *testing.T, path string) {
				lis, err := Listen(path, 0o660)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = lis.Close() })
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(shortDir(t), "run", "sds")
			path := filepath.Join(dir, "socket")
			if tt.prepare != nil {
				if err := os.MkdirAll(dir, 0o750); err != nil {
					t.Fatal(err)
				}
				tt.prepare(t, path)
			}
			lis, err := Listen(path, tt.mode)
			if tt.wantErr != "" {
				if err == nil {
					_ = lis.Close()
					t.Fatalf("Listen succeeded, want error containing %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Listen = %v, want error containing %q", err, tt.wantErr)
				}
				if _, err := os.Lstat(path); tt.wantKept && err != nil {
					t.Errorf("file at path was removed: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Listen: %v", err)
			}
			t.Cleanup(func() { _ = lis.Close() })
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != tt.mode {
				t.Errorf("socket mode = %v, want socket with %v", fi.Mode(), tt.mode)
			}
			di, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if di.Mode().Perm() != 0o750 {
				t.Errorf("dir mode = %v, want 0750", di.Mode().Perm())
			}
			// The listener accepts connections.
			conn, err := net.Dial("unix", path)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			_ = conn.Close()
		})
	}
}

func TestRunRemovesSocket(t *testing.T) {
	dir := filepath.Join(shortDir(t), "uds")
	path := filepath.Join(dir, "socket")
	h := newHarness(t) // for its store and a second server's source
	srv, err := New(Config{SocketPath: path, SocketMode: 0o600, Source: testSource{h.store}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	h.publishAll()
	// Wait until the second server serves it too.
	deadline := time.Now().Add(waitFor)
	for _, ok := srv.Versions()[def]; !ok; _, ok = srv.Versions()[def] {
		if time.Now().After(deadline) {
			t.Fatal("the second server does not serve default")
		}
		time.Sleep(5 * time.Millisecond)
	}
	conn, err := sdstest.Dial(h.ctx(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	resp, err := sdstest.Fetch(h.ctx(), conn, []string{def})
	if err != nil || len(resp.Secrets) != 1 {
		t.Fatalf("Fetch = %v, %v", resp, err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket = %v, %v; want mode 0600", fi, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-h.ctx().Done():
		t.Fatal("Run did not return after cancel")
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file still there after Run: %v", err)
	}
}
