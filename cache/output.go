// This file is OutputWriter: it writes the workload identity to a
// directory whenever it changes.

package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
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

	// fs makes every change on disk; nil is the real file system. Tests
	// set it to fail or stop any step.
	fs outputFS
}

// OutputWriter writes the workload identity to a directory, for proxyless
// gRPC clients and other tools that read certificates from disk (Istio's
// OUTPUT_CERTS): OutputCertChainFile and OutputKeyFile from "default",
// OutputRootCertFile from "ROOTCA".
//
// The three files change as one unit, in the layout kubelet uses for
// projected volumes: each write goes into a new directory
// "..<UTC time>.<random>" (files synced), a "..data_tmp" symlink to it is
// renamed over "..data", and each file name in Dir is a symlink to
// "..data/<name>", so its path never changes. A reader that opens the
// files sees one complete version, the previous one or the new one; a
// failed or interrupted write leaves the previous one (and the next write
// removes what it left); the previous version is removed after the swap.
// Plain files written by older agents are moved to this layout without
// changing what they show. A write happens only when content changed.
type OutputWriter struct {
	cfg OutputConfig
	log *zap.Logger
	out *outputDir
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
	if cfg.fs == nil {
		cfg.fs = osFS{}
	}
	return &OutputWriter{
		cfg: cfg,
		log: cfg.Logger.Named("output").With(zap.String("dir", cfg.Dir)),
		out: &outputDir{dir: cfg.Dir, fs: cfg.fs, now: cfg.Clock.Now},
	}, nil
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

// write publishes the current snapshot if it differs from what Dir
// shows. Names the snapshot lacks keep what Dir shows for them.
func (w *OutputWriter) write() error {
	snap := w.cfg.Source.Snapshot()
	st, err := readOutputState(w.cfg.Dir)
	if err != nil {
		return err
	}
	files := maps.Clone(st.visible)
	if roots, ok := snap.Get(RootCertName); ok {
		files[OutputRootCertFile] = roots.TrustedCAPEM
	}
	cert, haveCert := snap.Get(WorkloadCertName)
	if haveCert {
		files[OutputKeyFile] = cert.PrivateKeyPEM
		files[OutputCertChainFile] = cert.CertChainPEM
	}
	var changed []string
	for _, name := range outputFileNames {
		if data, ok := files[name]; ok && !bytes.Equal(data, st.visible[name]) {
			changed = append(changed, name)
		}
	}
	layoutOK := st.version != "" && st.linked
	if len(changed) == 0 && (layoutOK || len(files) == 0) {
		// Leftovers of an interrupted write are removed even so.
		return w.out.removeStale(st.version)
	}
	if !layoutOK && len(st.visible) > 0 {
		if st, err = w.out.migrate(st); err != nil {
			return err
		}
		w.log.Info("output directory moved to the versioned layout", zap.String("version", st.version))
	}
	if len(changed) == 0 {
		return nil
	}
	version, err := w.out.publish(st, files)
	if version == "" {
		return err
	}
	// Readers see the new files, even if tidying up after the swap
	// failed (the next write tidies up again).
	fields := []zap.Field{zap.Strings("files", changed), zap.String("version", version)}
	if haveCert {
		fields = append(fields, certFields(cert)...)
	}
	w.log.Info("certificates written to disk", fields...)
	if err != nil {
		return fmt.Errorf("after the new files were in place: %w", err)
	}
	return nil
}
