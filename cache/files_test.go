package cache

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/filewatch/filewatchtest"
	"github.com/sdsagent/sdsagent/internal/metrics"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// fileDebounce is the file watcher's debounce in most tests: short, so
// that they run fast.
const fileDebounce = 30 * time.Millisecond

// blockingSigner is a CA that never answers, for tests of file-backed
// names in CA mode.
type blockingSigner struct{}

func (blockingSigner) Sign(ctx context.Context, _ []byte, _ time.Duration) ([]string, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// fileHarness runs a Manager with real files and real file system events.
type fileHarness struct {
	t       *testing.T
	mgr     *Manager
	logs    *observer.ObservedLogs
	metrics *metrics.Metrics
	root    *testpki.CA
	updates <-chan struct{}
}

func newFileHarness(t *testing.T, mutate func(*Config)) *fileHarness {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	id, err := pki.WorkloadID("cluster.local", "default", "web")
	if err != nil {
		t.Fatal(err)
	}
	h := &fileHarness{t: t, logs: logs, metrics: metrics.New(prometheus.NewRegistry()), root: testpki.NewRoot(t, "file root")}
	cfg := Config{
		ID:           id,
		Signer:       blockingSigner{},
		FileDebounce: fileDebounce,
		Logger:       zap.New(core),
		Metrics:      h.metrics,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	h.mgr, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var cancelSub func()
	h.updates, cancelSub = h.mgr.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.mgr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(waitLimit):
			t.Errorf("Run did not return after cancel")
		}
		cancelSub()
	})
	return h
}

// leaf issues a leaf from the harness root; key may be nil.
func (h *fileHarness) leaf(opts testpki.LeafOptions) *testpki.Leaf {
	h.t.Helper()
	return h.root.IssueLeaf(h.t, opts)
}

// waitSecret waits until name is published and cond holds for it.
func (h *fileHarness) waitSecret(name string, cond func(*Secret) bool) *Secret {
	h.t.Helper()
	deadline := time.After(waitLimit)
	for {
		if sec, ok := h.mgr.Snapshot().Get(name); ok && cond(sec) {
			return sec
		}
		select {
		case <-h.updates:
		case <-deadline:
			h.t.Fatalf("%s not published as expected; name errors %v", name, h.mgr.NameErrors())
		}
	}
}

// waitServing waits until name serves leaf l.
func (h *fileHarness) waitServing(name string, l *testpki.Leaf) *Secret {
	h.t.Helper()
	return h.waitSecret(name, func(s *Secret) bool { return s.Certs[0].Equal(l.Cert) })
}

// eventually polls cond, for state that publishes nothing (logs, metrics).
func (h *fileHarness) eventually(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s; name errors %v", what, h.mgr.NameErrors())
		}
		select {
		case <-h.updates:
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// logged counts log lines with msg and, if given, resource.
func (h *fileHarness) logged(msg, resource string) int {
	n := 0
	for _, e := range h.logs.FilterMessage(msg).All() {
		if resource == "" || e.ContextMap()["resource"] == resource {
			n++
		}
	}
	return n
}

func (h *fileHarness) fileErrors(reason string) float64 {
	return testutil.ToFloat64(h.metrics.FileErrors.WithLabelValues(reason))
}

func (h *fileHarness) totalFileErrors() int {
	n := 0
	for _, r := range []string{FileMissing, FileUnreadable, FileNotRegular, FileTooLarge, FileEmpty, FileMalformed, FileKeyMismatch, FileExpired} {
		n += int(h.fileErrors(r))
	}
	return n
}

// expectUnchanged checks that name still serves sec. Call it once an
// event that follows the change under test has been seen (its refusal's
// log line, a later change published): then the change was handled.
func (h *fileHarness) expectUnchanged(name string, sec *Secret) {
	h.t.Helper()
	if got, _ := h.mgr.Snapshot().Get(name); got != sec {
		h.t.Fatalf("%s changed", name)
	}
}

// demandMarker asks for one more file-root name (with the names in
// keep) and waits until it is served: the file loop has then finished
// every pass before the one that loaded it.
func (h *fileHarness) demandMarker(keep ...string) string {
	h.t.Helper()
	path := writeFile(h.t, h.t.TempDir(), "marker.pem", h.root.CertPEM)
	name := FileRootPrefix + path
	h.mgr.SetDemand(append(keep, name))
	h.waitSecret(name, func(*Secret) bool { return true })
	return name
}

// loopPassed waits until the file loop has made a whole pass (loads, then
// the expiry check) that began after this call.
func (h *fileHarness) loopPassed(keep ...string) {
	h.t.Helper()
	first := h.demandMarker(keep...)
	h.demandMarker(append(keep, first)...)
}

func certName(certPath, keyPath string) string { return FileCertPrefix + certPath + "~" + keyPath }

func mountedFiles(ca *testpki.CA, l *testpki.Leaf) map[string][]byte {
	return map[string][]byte{MountedCertChainFile: l.ChainPEM, MountedKeyFile: l.KeyPEM, MountedRootCertFile: ca.CertPEM}
}

func TestMountedCertsAreServedWithoutCA(t *testing.T) {
	dir := t.TempDir()
	root := testpki.NewRoot(t, "mounted root")
	l := root.IssueLeaf(t, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/default/sa/web"}})
	for name, content := range mountedFiles(root, l) {
		writeFile(t, dir, name, content)
	}
	if !MountedCertsPresent(dir) || MountedCertsPresent(t.TempDir()) {
		t.Fatal("MountedCertsPresent is wrong")
	}
	h := newFileHarness(t, func(c *Config) { c.MountedCertDir, c.Signer = dir, nil })

	def := h.waitServing(WorkloadCertName, l)
	roots := h.waitSecret(RootCertName, func(*Secret) bool { return true })
	if !bytes.Equal(def.PrivateKeyPEM, l.KeyPEM) || !bytes.Equal(roots.TrustedCAPEM, root.CertPEM) {
		t.Fatal("served content is not the files'")
	}
	if err := h.mgr.Ready(); err != nil {
		t.Fatalf("Ready = %v", err)
	}
	if st := h.mgr.Status(); st.Issued != 1 || st.LastError != "" {
		t.Fatalf("status = %+v", st)
	}
	if got := testutil.ToFloat64(h.metrics.CertExpiryTimestamp.WithLabelValues(WorkloadCertName)); got != float64(l.Cert.NotAfter.Unix()) {
		t.Fatalf("expiry metric = %v, want %d", got, l.Cert.NotAfter.Unix())
	}
	h.eventually("the log to say the workload certificate comes from files", func() bool {
		return h.logged("serving the workload certificate from files; no CA is called", "") == 1
	})
}

func TestMountedCertsWaitForMissingFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	h := newFileHarness(t, func(c *Config) { c.MountedCertDir, c.Signer = dir, nil })
	h.eventually("the missing files to be reported", func() bool {
		return strings.Contains(h.mgr.NameErrors()[WorkloadCertName], FileMissing)
	})
	if err := h.mgr.Ready(); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, MountedCertChainFile)) {
		t.Fatalf("Ready = %v, want it to name the missing file", err)
	}
	h.eventually("the missing workload certificate to be logged", func() bool {
		return h.logged("file secret refused; nothing to serve yet", WorkloadCertName) == 1
	})

	l := h.leaf(testpki.LeafOptions{})
	filewatchtest.KubeletWrite(t, dir, mountedFiles(h.root, l))
	h.waitServing(WorkloadCertName, l)
	h.waitSecret(RootCertName, func(*Secret) bool { return true })
	if err := h.mgr.Ready(); err != nil {
		t.Fatalf("Ready after the files appeared = %v", err)
	}
}

func TestKubeletAtomicSwapsRepeated(t *testing.T) {
	dir := t.TempDir()
	root := testpki.NewRoot(t, "kubelet root")
	first := root.IssueLeaf(t, testpki.LeafOptions{})
	filewatchtest.KubeletWrite(t, dir, mountedFiles(root, first))
	// The default debounce, as in production.
	h := newFileHarness(t, func(c *Config) { c.MountedCertDir, c.Signer, c.FileDebounce = dir, nil, 0 })
	h.waitServing(WorkloadCertName, first)

	const swaps = 6
	for i := range swaps {
		l := root.IssueLeaf(t, testpki.LeafOptions{})
		filewatchtest.KubeletWrite(t, dir, mountedFiles(root, l))
		sec := h.waitServing(WorkloadCertName, l)
		if !bytes.Equal(sec.PrivateKeyPEM, l.KeyPEM) {
			t.Fatalf("swap %d: key and chain from different swaps", i+1)
		}
	}
	// The log line follows the publish.
	h.eventually("a log line per swap", func() bool { return h.logged("file secret loaded", WorkloadCertName) >= swaps+1 })
	if n := h.logged("file secret loaded", WorkloadCertName); n != swaps+1 {
		t.Fatalf("default published %d times, want %d (once per swap)", n, swaps+1)
	}
	if n := h.logged("file secret loaded", RootCertName); n != 1 {
		t.Fatalf("the unchanged ROOTCA was published %d times, want once", n)
	}
	if n := h.totalFileErrors(); n != 0 {
		t.Fatalf("%d file errors during atomic swaps", n)
	}
	if got := testutil.ToFloat64(h.metrics.Rotations); got != swaps {
		t.Fatalf("rotations = %v, want %d", got, swaps)
	}
}

func TestRenameOverWrite(t *testing.T) {
	dir := t.TempDir()
	ca := writeFile(t, dir, "ca.crt", testpki.NewRoot(t, "r0").CertPEM)
	h := newFileHarness(t, nil)
	name := FileRootPrefix + ca
	h.mgr.SetDemand([]string{name})
	h.waitSecret(name, func(*Secret) bool { return true })

	for i := range 3 {
		r := testpki.NewRoot(t, fmt.Sprintf("r%d", i+1))
		filewatchtest.RenameOver(t, ca, r.CertPEM)
		h.waitSecret(name, func(s *Secret) bool { return s.Certs[0].Equal(r.Cert) })
	}
}

func TestDeleteAndRecreate(t *testing.T) {
	dir := t.TempDir()
	r0, r1 := testpki.NewRoot(t, "r0"), testpki.NewRoot(t, "r1")
	ca := writeFile(t, dir, "ca.crt", r0.CertPEM)
	h := newFileHarness(t, nil)
	name := FileRootPrefix + ca
	h.mgr.SetDemand([]string{name})
	served := h.waitSecret(name, func(*Secret) bool { return true })

	if err := os.Remove(ca); err != nil {
		t.Fatal(err)
	}
	h.eventually("the deletion to be refused", func() bool { return h.fileErrors(FileMissing) == 1 })
	if got, _ := h.mgr.Snapshot().Get(name); got != served {
		t.Fatal("the last good secret is not served after its file was deleted")
	}
	if e := h.mgr.NameErrors()[name]; !strings.Contains(e, ca) || !strings.Contains(e, FileMissing) {
		t.Fatalf("name error = %q", e)
	}
	if h.logged("file secret refused; serving the previous one", name) != 1 {
		t.Fatal("the deletion is not logged once")
	}

	writeFile(t, dir, "ca.crt", r1.CertPEM)
	h.waitSecret(name, func(s *Secret) bool { return s.Certs[0].Equal(r1.Cert) })
	if errs := h.mgr.NameErrors(); len(errs) != 0 {
		t.Fatalf("name errors after recovery: %v", errs)
	}
}

func TestSymlinkChainAcrossDirectories(t *testing.T) {
	// a/tls.{crt,key} -> b/current/tls.{crt,key}; b/current -> c/v1, as a
	// CSI driver lays out its mounts.
	base := t.TempDir()
	h := newFileHarness(t, nil)
	l1, l2 := h.leaf(testpki.LeafOptions{}), h.leaf(testpki.LeafOptions{})
	for v, l := range map[string]*testpki.Leaf{"v1": l1, "v2": l2} {
		writeFile(t, filepath.Join(base, "c", v), "tls.crt", l.ChainPEM)
		writeFile(t, filepath.Join(base, "c", v), "tls.key", l.KeyPEM)
	}
	for _, d := range []string{"a", "b"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(base, "c", "v1"), filepath.Join(base, "b", "current")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.Symlink(filepath.Join(base, "b", "current", f), filepath.Join(base, "a", f)); err != nil {
			t.Fatal(err)
		}
	}
	name := certName(filepath.Join(base, "a", "tls.crt"), filepath.Join(base, "a", "tls.key"))
	h.mgr.SetDemand([]string{name})
	h.waitServing(name, l1)

	tmp := filepath.Join(base, "b", "current.tmp")
	if err := os.Symlink(filepath.Join(base, "c", "v2"), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(base, "b", "current")); err != nil {
		t.Fatal(err)
	}
	h.waitServing(name, l2)

	// The new target is watched in place too.
	l3 := h.leaf(testpki.LeafOptions{Key: l2.Key})
	filewatchtest.RenameOver(t, filepath.Join(base, "c", "v2", "tls.crt"), l3.ChainPEM)
	h.waitServing(name, l3)
}

func TestWriteInStepsIsPublishedOnce(t *testing.T) {
	dir := t.TempDir()
	ca := writeFile(t, dir, "ca.crt", testpki.NewRoot(t, "r0").CertPEM)
	h := newFileHarness(t, func(c *Config) { c.FileDebounce = 80 * time.Millisecond })
	name := FileRootPrefix + ca
	h.mgr.SetDemand([]string{name})
	h.waitSecret(name, func(*Secret) bool { return true })

	bundle := append(testpki.NewRoot(t, "r1").CertPEM, testpki.NewRoot(t, "r2").CertPEM...)
	filewatchtest.WriteInSteps(t, ca, bundle, 4, 15*time.Millisecond)
	h.waitSecret(name, func(s *Secret) bool { return len(s.Certs) == 2 })
	// A later write: once it is published, every event of the write in
	// steps has been handled.
	r3 := testpki.NewRoot(t, "r3")
	filewatchtest.RenameOver(t, ca, r3.CertPEM)
	h.waitSecret(name, func(s *Secret) bool { return s.Certs[0].Equal(r3.Cert) })
	// Its line follows the publish, and every earlier line.
	h.eventually("the later write logged", func() bool { return h.logged("file secret loaded", name) >= 3 })
	if n := h.logged("file secret loaded", name); n != 3 {
		t.Fatalf("published %d times, want 3 (the first file, the finished write, the later write)", n)
	}
	if n := h.totalFileErrors(); n != 0 {
		t.Fatalf("%d file errors: a half-written state was read", n)
	}
}

func TestBrokenFilesAreRefusedAndLastGoodServed(t *testing.T) {
	tests := []struct {
		name   string
		reason string
		file   string // which file is at fault: "crt" or "key"
		// breaks returns the (cert, key) contents to write; nil leaves
		// a file as it is.
		breaks func(h *fileHarness, good *testpki.Leaf) (crt, key []byte)
	}{
		{"key of another certificate", FileKeyMismatch, "key", func(h *fileHarness, _ *testpki.Leaf) ([]byte, []byte) {
			return nil, h.leaf(testpki.LeafOptions{}).KeyPEM
		}},
		{"half-written chain", FileMalformed, "crt", func(_ *fileHarness, good *testpki.Leaf) ([]byte, []byte) {
			return half(good.ChainPEM), nil
		}},
		{"empty chain", FileEmpty, "crt", func(*fileHarness, *testpki.Leaf) ([]byte, []byte) { return []byte{}, nil }},
		{"expired leaf", FileExpired, "crt", func(h *fileHarness, good *testpki.Leaf) ([]byte, []byte) {
			now := time.Now()
			return h.leaf(testpki.LeafOptions{Key: good.Key, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)}).ChainPEM, nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			h := newFileHarness(t, nil)
			good := h.leaf(testpki.LeafOptions{})
			paths := map[string]string{
				"crt": writeFile(t, dir, "tls.crt", good.ChainPEM),
				"key": writeFile(t, dir, "tls.key", good.KeyPEM),
			}
			name := certName(paths["crt"], paths["key"])
			h.mgr.SetDemand([]string{name})
			served := h.waitServing(name, good)

			crt, key := tt.breaks(h, good)
			if crt != nil {
				filewatchtest.RenameOver(t, paths["crt"], crt)
			}
			if key != nil {
				filewatchtest.RenameOver(t, paths["key"], key)
			}
			h.eventually("the refusal to be counted", func() bool { return h.fileErrors(tt.reason) == 1 })
			if got, _ := h.mgr.Snapshot().Get(name); got != served {
				t.Fatal("the broken files replaced the last good secret")
			}
			lines := h.logs.FilterMessage("file secret refused; serving the previous one").All()
			if len(lines) != 1 {
				t.Fatalf("%d refusal log lines, want 1", len(lines))
			}
			fields := lines[0].ContextMap()
			if fields["file"] != paths[tt.file] || fields["reason"] != tt.reason || fields["resource"] != name || fields["hint"] == "" {
				t.Fatalf("refusal log %v does not name the file %s, the reason %s and a hint", fields, paths[tt.file], tt.reason)
			}
			if e := h.mgr.NameErrors()[name]; !strings.Contains(e, tt.reason) {
				t.Fatalf("name error = %q, want the reason %s", e, tt.reason)
			}
			if strings.Contains(fmt.Sprint(h.logs.All()), strings.Split(string(good.KeyPEM), "\n")[1]) {
				t.Fatal("key material in the logs")
			}

			// A later good write recovers without a restart.
			fixed := h.leaf(testpki.LeafOptions{})
			filewatchtest.RenameOver(t, paths["key"], fixed.KeyPEM)
			filewatchtest.RenameOver(t, paths["crt"], fixed.ChainPEM)
			h.waitServing(name, fixed)
			h.eventually("the name error to clear", func() bool { return len(h.mgr.NameErrors()) == 0 })
		})
	}
}

func TestOnDemandLoadAndDrop(t *testing.T) {
	dir := t.TempDir()
	h := newFileHarness(t, nil)
	l := h.leaf(testpki.LeafOptions{})
	crt, key := writeFile(t, dir, "tls.crt", l.ChainPEM), writeFile(t, dir, "tls.key", l.KeyPEM)
	name := certName(crt, key)
	if err := h.mgr.CheckName(name); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.mgr.Snapshot().Get(name); ok {
		t.Fatal("served before any stream asked")
	}

	h.mgr.SetDemand([]string{WorkloadCertName, name})
	h.waitServing(name, l)
	if got := testutil.ToFloat64(h.metrics.CertExpiryTimestamp.WithLabelValues(name)); got != float64(l.Cert.NotAfter.Unix()) {
		t.Fatalf("expiry metric = %v", got)
	}

	h.mgr.SetDemand([]string{WorkloadCertName})
	if _, ok := h.mgr.Snapshot().Get(name); ok {
		t.Fatal("still served once no stream wants it")
	}
	if h.metrics.CertExpiryTimestamp.DeleteLabelValues(name) {
		t.Fatal("the expiry metric of a dropped name is still exported")
	}
	if h.logged("file secret dropped; no stream wants it", name) != 1 {
		t.Fatal("the drop is not logged")
	}
	// Unwatched: a change publishes nothing. A watched file changed after
	// it is the marker: were the dropped name still watched, its change
	// would be loaded first (in an earlier batch, or before it by name).
	marker := writeFile(t, dir, "marker.pem", h.root.CertPEM)
	h.mgr.SetDemand([]string{WorkloadCertName, FileRootPrefix + marker})
	h.waitSecret(FileRootPrefix+marker, func(*Secret) bool { return true })
	filewatchtest.RenameOver(t, crt, h.leaf(testpki.LeafOptions{Key: l.Key}).ChainPEM)
	next := testpki.NewRoot(t, "marker root")
	filewatchtest.RenameOver(t, marker, next.CertPEM)
	h.waitSecret(FileRootPrefix+marker, func(s *Secret) bool { return s.Certs[0].Equal(next.Cert) })
	if _, ok := h.mgr.Snapshot().Get(name); ok {
		t.Fatal("a dropped name was published again")
	}

	// Wanted again: loaded again, with the current files.
	h.mgr.SetDemand([]string{name})
	h.waitSecret(name, func(s *Secret) bool { return !s.Certs[0].Equal(l.Cert) })
}

func TestMissingFileIsServedWhenItAppears(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "later")
	h := newFileHarness(t, nil)
	crt, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	name := certName(crt, key)
	h.mgr.SetDemand([]string{name})
	h.eventually("the missing file to be reported", func() bool {
		return strings.Contains(h.mgr.NameErrors()[name], crt)
	})
	if _, ok := h.mgr.Snapshot().Get(name); ok {
		t.Fatal("something is served for missing files")
	}

	l := h.leaf(testpki.LeafOptions{})
	filewatchtest.KubeletWrite(t, dir, map[string][]byte{"tls.crt": l.ChainPEM, "tls.key": l.KeyPEM})
	h.waitServing(name, l)
	h.eventually("the name error to clear", func() bool { return len(h.mgr.NameErrors()) == 0 })
}

func TestMalformedNamesAreErrorsNeverTheWorkloadCert(t *testing.T) {
	h := newFileHarness(t, nil)
	bad := []string{
		"file-cert:/etc/certs/tls.crt",
		"file-cert:certs/tls.crt~/etc/certs/tls.key",
		"file-cert:~/etc/certs/tls.key",
		"file-root:",
		"file-root:ca.crt",
		"nope",
	}
	for _, name := range bad {
		if err := h.mgr.CheckName(name); err == nil {
			t.Errorf("CheckName(%q) = nil", name)
		}
	}
	for _, name := range []string{WorkloadCertName, RootCertName, "file-cert:/a~/b", "file-root:/a", SystemRootName} {
		if err := h.mgr.CheckName(name); err != nil {
			t.Errorf("CheckName(%q) = %v", name, err)
		}
	}

	h.mgr.SetDemand(append([]string{WorkloadCertName}, bad...))
	errs := h.mgr.NameErrors()
	for _, name := range bad {
		if errs[name] == "" {
			t.Errorf("no name error for %q", name)
		}
		if _, ok := h.mgr.Snapshot().Get(name); ok {
			t.Errorf("%q is served", name)
		}
	}
	if _, ok := errs[WorkloadCertName]; ok || len(errs) != len(bad) {
		t.Fatalf("name errors = %v", errs)
	}
	h.mgr.SetDemand(nil)
	if errs := h.mgr.NameErrors(); len(errs) != 0 {
		t.Fatalf("name errors once nothing is wanted: %v", errs)
	}
}

func TestSystemRootsAreServedAndWatched(t *testing.T) {
	dir := t.TempDir()
	r1, r2 := testpki.NewRoot(t, "os 1"), testpki.NewRoot(t, "os 2")
	bundle := writeFile(t, dir, "ca-certificates.crt", r1.CertPEM)
	h := newFileHarness(t, func(c *Config) { c.SystemRootFiles = []string{filepath.Join(dir, "missing.crt"), bundle} })
	h.mgr.SetDemand([]string{SystemRootName})
	sec := h.waitSecret(SystemRootName, func(*Secret) bool { return true })
	if sec.Source != bundle {
		t.Fatalf("served %s, want %s", sec.Source, bundle)
	}
	filewatchtest.RenameOver(t, bundle, append(bytes.Clone(r1.CertPEM), r2.CertPEM...))
	h.waitSecret(SystemRootName, func(s *Secret) bool { return len(s.Certs) == 2 })
}

func TestExpiryOfMountedCertsIsWarned(t *testing.T) {
	clk := clocktest.New(start)
	dir := t.TempDir()
	root := testpki.NewRootValid(t, "root", start.Add(-24*time.Hour), start.Add(365*24*time.Hour))
	// Lifetime 130m; with the grace ratio 0.5 the warning is due 65m
	// before NotAfter.
	l := root.IssueLeaf(t, testpki.LeafOptions{NotBefore: start.Add(-10 * time.Minute), NotAfter: start.Add(2 * time.Hour)})
	for name, content := range mountedFiles(root, l) {
		writeFile(t, dir, name, content)
	}
	h := newFileHarness(t, func(c *Config) {
		c.MountedCertDir, c.Signer, c.Clock, c.GraceRatio = dir, nil, clk, 0.5
	})
	h.waitServing(WorkloadCertName, l)
	if !clk.WaitForTimers(1, waitLimit) {
		t.Fatal("nothing waits for the expiry")
	}
	const near, expired = "file certificate nears expiry", "file certificate expired; still serving it"
	if h.logged(near, "") != 0 {
		t.Fatal("warned at load, long before expiry")
	}

	warnAt := l.Cert.NotAfter.Add(-65 * time.Minute)
	clk.Set(warnAt.Add(-time.Second))
	h.loopPassed(WorkloadCertName)
	if h.logged(near, "") != 0 {
		t.Fatal("warned before less than the grace ratio of the lifetime remained")
	}
	clk.Set(warnAt)
	h.eventually("the expiry warning", func() bool { return h.logged(near, WorkloadCertName) == 1 })
	line := h.logs.FilterMessage(near).All()[0]
	if line.Level != zapcore.WarnLevel || line.ContextMap()["file"] != filepath.Join(dir, MountedCertChainFile) || line.ContextMap()["hint"] == "" {
		t.Fatalf("warning = %v %v", line.Level, line.ContextMap())
	}

	clk.Set(l.Cert.NotAfter.Add(2 * time.Second))
	h.eventually("the expired error", func() bool { return h.logged(expired, WorkloadCertName) == 1 })
	clk.Advance(time.Hour)
	h.loopPassed(WorkloadCertName)
	clk.Advance(time.Hour)
	h.loopPassed(WorkloadCertName)
	if h.logged(near, "") != 1 || h.logged(expired, "") != 1 {
		t.Fatal("expiry logged more than once per level")
	}
	// Still served: the agent does not own the files and must not take
	// the identity away.
	if _, ok := h.mgr.Snapshot().Get(WorkloadCertName); !ok {
		t.Fatal("the expired certificate was withdrawn")
	}
	if got := testutil.ToFloat64(h.metrics.CertExpiryTimestamp.WithLabelValues(WorkloadCertName)); got != float64(l.Cert.NotAfter.Unix()) {
		t.Fatalf("expiry metric = %v", got)
	}
}
