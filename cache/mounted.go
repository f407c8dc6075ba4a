// This file serves the workload certificate from mounted files
// (Config.MountedCertDir) instead of a CA: it registers them with the
// file registry and keeps Status as they change.

package cache

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"time"
)

// Names of the mounted workload certificate files in
// Config.MountedCertDir, as Istio's agent names them.
const (
	MountedCertChainFile = "cert-chain.pem"
	MountedKeyFile       = "key.pem"
	MountedRootCertFile  = "root-cert.pem"
)

// MountedCertsPresent reports whether dir holds the three mounted
// workload certificate files.
func MountedCertsPresent(dir string) bool {
	for _, f := range []string{MountedCertChainFile, MountedKeyFile, MountedRootCertFile} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.IsDir() {
			return false
		}
	}
	return true
}

// addMountedFiles serves the mounted chain and key as "default" and makes
// the mounted root file the primary trust roots.
func (m *Manager) addMountedFiles() {
	dir := m.cfg.MountedCertDir
	m.files.addStatic(WorkloadCertName, fileSpec{kind: TLSCertificate,
		cert: filepath.Join(dir, MountedCertChainFile),
		key:  filepath.Join(dir, MountedKeyFile)})
	m.files.addEntry(&fileEntry{name: RootCertName,
		spec: fileSpec{kind: ValidationContext, ca: filepath.Join(dir, MountedRootCertFile)},
		sink: func(l fileLoad) {
			m.updateTrust(nil, func(chain []*x509.Certificate) rootsUpdate {
				return m.trust.mountedRoots(l.sec.Certs, l.sec.Source, chain)
			})
		}})
}

// fileLoaded keeps Status for a mounted workload certificate.
func (m *Manager) fileLoaded(name string, published bool, err error) {
	if name != WorkloadCertName {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Clock.Now()
	m.status.LastAttempt = now
	switch {
	case err != nil:
		m.status.LastError = err.Error()
		m.status.Failures++
	case published:
		if m.status.Issued > 0 {
			m.cfg.Metrics.Rotations.Inc()
		}
		m.status.Issued++
		m.status.LastIssued = now
		fallthrough
	default:
		m.status.LastError = ""
		m.status.Failures = 0
	}
}

// watchMountedExpiry keeps the expired state of a mounted workload
// certificate until ctx ends: at its NotAfter, and after every change.
func (m *Manager) watchMountedExpiry(ctx context.Context) {
	updates, cancel := m.store.Subscribe()
	defer cancel()
	for {
		var timerC <-chan time.Time
		var t interface{ Stop() bool }
		now := m.cfg.Clock.Now()
		if at := m.checkExpired(now); !at.IsZero() {
			tm := m.cfg.Clock.NewTimer(min(at.Round(0).Sub(now.Round(0)), m.cfg.WakeInterval))
			t, timerC = tm, tm.C()
		}
		select {
		case <-ctx.Done():
			if t != nil {
				t.Stop()
			}
			return
		case <-updates:
		case <-timerC:
		}
		if t != nil {
			t.Stop()
		}
	}
}
