package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
)

// Files written by OutputWriter, as Istio's OUTPUT_CERTS names them, and
// their modes: the key only for its owner, the certificates for anyone.
const (
	OutputCertChainFile = MountedCertChainFile
	OutputKeyFile       = MountedKeyFile
	OutputRootCertFile  = MountedRootCertFile

	OutputKeyMode  os.FileMode = 0o600
	OutputCertMode os.FileMode = 0o644
)

// Retry bounds of OutputWriter after a failed write.
const (
	outputRetryInitial = time.Second
	outputRetryMax     = time.Minute
)

// SnapshotSource publishes snapshots; Manager and Store implement it.
// Its methods must be safe for concurrent use.
type SnapshotSource interface {
	// Snapshot returns the current secrets; the caller does not modify
	// them.
	Snapshot() *Snapshot
	// Subscribe notifies of changes, see Store.Subscribe.
	Subscribe() (updates <-chan struct{}, cancel func())
}

// OutputConfig configures an OutputWriter.
type OutputConfig struct {
	// Dir receives the files; it is created (0755) if missing. Required.
	Dir string
	// Source supplies "default" and "ROOTCA". Required.
	Source SnapshotSource
	// Clock and Logger default to the real clock and a no-op logger.
	Clock  clock.Clock
	Logger *zap.Logger
}

// OutputWriter writes the workload identity to a directory, for proxyless
// gRPC clients and other tools that read certificates from disk (Istio's
// OUTPUT_CERTS): OutputCertChainFile and OutputKeyFile from "default",
// OutputRootCertFile from "ROOTCA". Each file is replaced atomically
// (a temporary file in the same directory, synced, renamed over the old
// one, then the directory synced) and only when its content changed.
// The root is written first, so that a reader that sees a new leaf
// already trusts its issuer.
type OutputWriter struct {
	cfg OutputConfig
	log *zap.Logger
}

// NewOutputWriter returns a writer for cfg. It starts nothing; call Run.
func NewOutputWriter(cfg OutputConfig) (*OutputWriter, error) {
	if cfg.Dir == "" {
		return nil, errors.New("output certificates: directory is required")
	}
	if cfg.Source == nil {
		return nil, errors.New("output certificates: source is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &OutputWriter{cfg: cfg, log: cfg.Logger.Named("output").With(zap.String("dir", cfg.Dir))}, nil
}

// Run writes the files whenever the source changes, until ctx ends. A
// failed write is logged and retried with backoff; the next change is
// written anyway. It returns an error only when the directory cannot be
// created, and nil when ctx is cancelled.
func (w *OutputWriter) Run(ctx context.Context) error {
	if err := os.MkdirAll(w.cfg.Dir, 0o755); err != nil {
		return fmt.Errorf("output certificates: create directory: %w", err)
	}
	updates, cancel := w.cfg.Source.Subscribe()
	defer cancel()
	var (
		retry clock.Timer
		wait  time.Duration
	)
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		var retryC <-chan time.Time
		if retry != nil {
			retryC = retry.C()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-updates:
		case <-retryC:
		}
		if retry != nil {
			retry.Stop()
			retry = nil
		}
		if err := w.write(); err != nil {
			wait = min(max(2*wait, outputRetryInitial), outputRetryMax)
			w.log.Error("certificates not written to disk", zap.Error(err), zap.Duration("retry_in", wait),
				zap.String("hint", "check that the directory is writable by the agent and its file system has space"))
			retry = w.cfg.Clock.NewTimer(wait)
			continue
		}
		wait = 0
	}
}

// write writes what changed in the current snapshot.
func (w *OutputWriter) write() error {
	snap := w.cfg.Source.Snapshot()
	type file struct {
		name string
		data []byte
		mode os.FileMode
	}
	var files []file
	if roots, ok := snap.Get(RootCertName); ok {
		files = append(files, file{OutputRootCertFile, roots.TrustedCAPEM, OutputCertMode})
	}
	cert, haveCert := snap.Get(WorkloadCertName)
	if haveCert {
		files = append(files,
			file{OutputKeyFile, cert.PrivateKeyPEM, OutputKeyMode},
			file{OutputCertChainFile, cert.CertChainPEM, OutputCertMode})
	}
	var written []string
	for _, f := range files {
		path := filepath.Join(w.cfg.Dir, f.name)
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, f.data) {
			continue
		}
		if err := writeAtomic(path, f.data, f.mode); err != nil {
			return err
		}
		written = append(written, f.name)
	}
	if len(written) == 0 {
		return nil
	}
	if err := syncDir(w.cfg.Dir); err != nil {
		return err
	}
	fields := []zap.Field{zap.Strings("files", written)}
	if haveCert {
		fields = append(fields, certFields(cert)...)
	}
	w.log.Info("certificates written to disk", fields...)
	return nil
}

// writeAtomic replaces path with data: readers see the old file or the
// new one, never a part, and after a crash one of the two survives.
func writeAtomic(path string, data []byte, mode os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// syncDir makes renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
