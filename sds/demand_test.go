package sds

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/filewatch/filewatchtest"
	"github.com/sdsagent/sdsagent/internal/metrics"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// demandSource is a testSource that records SetDemand calls.
type demandSource struct {
	testSource

	mu      sync.Mutex
	calls   [][]string
	changed chan struct{}
}

func (d *demandSource) SetDemand(names []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, names)
	close(d.changed)
	d.changed = make(chan struct{})
}

// waitDemand waits until the last SetDemand call was want.
func (d *demandSource) waitDemand(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		d.mu.Lock()
		var last []string
		if len(d.calls) > 0 {
			last = d.calls[len(d.calls)-1]
		}
		changed := d.changed
		d.mu.Unlock()
		if slices.Equal(last, want) {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("demand is %q, want %q", last, want)
		}
	}
}

func TestDemandIsTheUnionOfOpenStreams(t *testing.T) {
	src := &demandSource{changed: make(chan struct{})}
	h := newHarnessWith(t, harnessOptions{source: func(s *cache.Store) Source {
		src.testSource = testSource{s}
		return src
	}})
	const (
		fc = "file-cert:/a~/b"
		fr = "file-root:/c"
	)
	sotw := h.openStream()
	if err := sotw.Request(def, fc); err != nil {
		t.Fatal(err)
	}
	src.waitDemand(t, def, fc)

	delta := h.openDelta()
	if err := delta.Subscribe(fr, def); err != nil {
		t.Fatal(err)
	}
	src.waitDemand(t, def, fc, fr)

	if err := sotw.Request(def); err != nil {
		t.Fatal(err)
	}
	src.waitDemand(t, def, fr)
	if err := delta.Unsubscribe(fr); err != nil {
		t.Fatal(err)
	}
	src.waitDemand(t, def)

	sotw.Close()
	delta.Close()
	src.waitDemand(t)

	// Only changes are reported: each call differs from the one before.
	src.mu.Lock()
	defer src.mu.Unlock()
	for i := 1; i < len(src.calls); i++ {
		if slices.Equal(src.calls[i], src.calls[i-1]) {
			t.Fatalf("SetDemand called twice in a row with %q: %q", src.calls[i], src.calls)
		}
	}
}

// managerHarness is an SDS server fed by a real cache.Manager serving
// mounted files.
type managerHarness struct {
	*harness
	mgr *cache.Manager
	ca  *testpki.CA
}

func newManagerHarness(t *testing.T) *managerHarness {
	t.Helper()
	ca := testpki.NewRoot(t, "mounted root")
	dir := t.TempDir()
	l := ca.IssueLeaf(t, testpki.LeafOptions{URIs: []string{spiffeA}})
	for name, content := range map[string][]byte{
		cache.MountedCertChainFile: l.ChainPEM, cache.MountedKeyFile: l.KeyPEM, cache.MountedRootCertFile: ca.CertPEM,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mh := &managerHarness{ca: ca}
	mh.harness = newHarnessWith(t, harnessOptions{infoLogs: true, source: func(*cache.Store) Source {
		mgr, err := cache.New(cache.Config{MountedCertDir: dir, FileDebounce: 30 * time.Millisecond, Metrics: metrics.New(nil), Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		mh.mgr = mgr
		return mgr
	}})
	mh.keys = append(mh.keys, l.KeyPEM)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mh.mgr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager Run = %v", err)
		}
	})
	return mh
}

// pair writes a new leaf (reusing key if given) into dir as tls.crt and
// tls.key by rename, and returns it.
func (mh *managerHarness) pair(dir string, opts testpki.LeafOptions) *testpki.Leaf {
	mh.t.Helper()
	l := mh.ca.IssueLeaf(mh.t, opts)
	mh.mu.Lock()
	mh.keys = append(mh.keys, l.KeyPEM)
	mh.mu.Unlock()
	filewatchtest.RenameOver(mh.t, filepath.Join(dir, "tls.key"), l.KeyPEM)
	filewatchtest.RenameOver(mh.t, filepath.Join(dir, "tls.crt"), l.ChainPEM)
	return l
}

// waitDropped waits until the manager no longer serves name.
func (mh *managerHarness) waitDropped(name string) {
	mh.t.Helper()
	updates, cancel := mh.mgr.Subscribe()
	defer cancel()
	deadline := time.After(waitFor)
	for {
		if _, ok := mh.mgr.Snapshot().Get(name); !ok {
			return
		}
		select {
		case <-updates:
		case <-deadline:
			mh.t.Fatalf("%s still served", name)
		}
	}
}

// recvWith receives responses until one carries name, ACKing each.
func (mh *managerHarness) recvWith(st *sdstest.Stream, name string) *sdstest.Response {
	mh.t.Helper()
	for {
		resp := mh.recv(st)
		if err := st.ACK(); err != nil {
			mh.t.Fatal(err)
		}
		if resp.Secret(name) != nil {
			return resp
		}
	}
}

func TestFileCertLoadedOnDemandPushedAndDropped(t *testing.T) {
	mh := newManagerHarness(t)
	dir := t.TempDir()
	first := mh.pair(dir, testpki.LeafOptions{URIs: []string{spiffeB}})
	name := fmt.Sprintf("file-cert:%s~%s", filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))

	st := mh.openStream()
	if err := st.Request(def, name); err != nil {
		t.Fatal(err)
	}
	resp := mh.recvWith(st, name)
	got := resp.Secret(name).GetTlsCertificate()
	if !bytes.Equal(got.GetCertificateChain().GetInlineBytes(), first.ChainPEM) || !bytes.Equal(got.GetPrivateKey().GetInlineBytes(), first.KeyPEM) {
		t.Fatal("the served file-cert is not the files' content")
	}

	// A change to the files is pushed.
	next := mh.pair(dir, testpki.LeafOptions{Key: first.Key, URIs: []string{spiffeB}})
	resp = mh.recvWith(st, name)
	for !bytes.Equal(resp.Secret(name).GetTlsCertificate().GetCertificateChain().GetInlineBytes(), next.ChainPEM) {
		resp = mh.recvWith(st, name)
	}
	if resp.Secret(def) != nil {
		t.Fatal("the unchanged default was pushed again")
	}

	// A marker: a file-root: name another stream keeps wanting, in a
	// directory of its own. File events reach the manager in order, in
	// batches it loads one after the other, so once a change to the marker
	// written after the rewrite below has been pushed twice, a reload of
	// the dropped name caused by the rewrite would have been published.
	markDir := t.TempDir()
	markFile := filepath.Join(markDir, "ca.pem")
	filewatchtest.RenameOver(t, markFile, testpki.NewRoot(t, "marker 0").CertPEM)
	mark := cache.FileRootPrefix + markFile
	markSt := mh.openStream()
	if err := markSt.Request(mark); err != nil {
		t.Fatal(err)
	}
	mh.recvWith(markSt, mark)

	// No stream wants it any more: dropped from the cache and unwatched.
	st.Close()
	mh.waitDropped(name)
	mh.pair(dir, testpki.LeafOptions{Key: first.Key})
	for _, label := range []string{"marker 1", "marker 2"} {
		want := testpki.NewRoot(t, label).CertPEM
		filewatchtest.RenameOver(t, markFile, want)
		for {
			got := mh.recvWith(markSt, mark).Secret(mark).GetValidationContext().GetTrustedCa().GetInlineBytes()
			if bytes.Contains(got, want) {
				break
			}
		}
	}
	if _, ok := mh.mgr.Snapshot().Get(name); ok {
		t.Fatal("a dropped name was loaded again")
	}

	// Delta streams drive the demand the same way.
	delta := mh.openDelta()
	if err := delta.Subscribe(name); err != nil {
		t.Fatal(err)
	}
	if dresp := mh.recvDelta(delta); dresp.Secret(name) == nil {
		t.Fatalf("delta got %v, want %s", dresp.Names(), name)
	}
	if err := delta.Unsubscribe(name); err != nil {
		t.Fatal(err)
	}
	mh.waitDropped(name)
}

func TestMalformedFileNameIsReportedNeverAnswered(t *testing.T) {
	mh := newManagerHarness(t)
	bad := "file-cert:certs/tls.crt~certs/tls.key"
	st := mh.openStream()
	if err := st.Request(def, bad); err != nil {
		t.Fatal(err)
	}
	resp := mh.recv(st)
	if names := resp.Names(); !slices.Equal(names, []string{def}) {
		t.Fatalf("answered %v, want only %s", names, def)
	}
	info := mh.oneStream("the malformed name to be recorded", func(s StreamInfo) bool { return slices.Contains(s.UnknownNames, bad) })
	if slices.Contains(info.UnknownNames, def) {
		t.Fatal("default marked unknown")
	}
	if e := mh.mgr.NameErrors()[bad]; !strings.Contains(e, "not absolute") {
		t.Fatalf("name error = %q", e)
	}
	found := false
	for _, e := range mh.logs.FilterMessage("unknown resource name requested").All() {
		if e.ContextMap()["resource"] == bad && strings.Contains(fmt.Sprint(e.ContextMap()["reason"]), "not absolute") {
			found = true
		}
	}
	if !found {
		t.Fatal("the malformed name is not logged with its reason")
	}
}
