package filewatch

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/filewatch/filewatchtest"
)

// watchedDirs returns the directories w watches now, sorted.
func (w *Watcher) watchedDirs() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Sorted(maps.Keys(w.dirs))
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	// debounce is shorter than the default to keep tests fast.
	debounce = 30 * time.Millisecond
	// waitLimit bounds waiting for a report that must come.
	waitLimit = 5 * time.Second
)

func open(t *testing.T, cfg Config) *Watcher {
	t.Helper()
	if cfg.Debounce == 0 {
		cfg.Debounce = debounce
	}
	w, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// waitReport waits for a report that includes path.
func waitReport(t *testing.T, w *Watcher, path string) {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		select {
		case batch := <-w.Changes():
			if slices.Contains(batch, path) {
				return
			}
		case <-deadline:
			t.Fatalf("%s not reported within %s; watching %v", path, waitLimit, w.watchedDirs())
		}
	}
}

// reportsUntil returns every path reported up to and including the
// batch that reports marker. A change made before marker's is reported
// before it or with it, so a test checks that nothing else came by
// writing marker after the change that must not be reported. With clk,
// it moves that fake clock a debounce at a time while it waits.
func reportsUntil(t *testing.T, w *Watcher, marker string, clk *clocktest.Fake) []string {
	t.Helper()
	var got []string
	deadline := time.After(waitLimit)
	for {
		var tick <-chan time.Time
		if clk != nil {
			tick = time.After(time.Millisecond)
		}
		select {
		case batch := <-w.Changes():
			got = append(got, batch...)
			if slices.Contains(batch, marker) {
				return got
			}
		case <-tick:
			clk.Advance(debounce)
		case <-deadline:
			t.Fatalf("%s not reported within %s; reported %v, watching %v", marker, waitLimit, got, w.watchedDirs())
		}
	}
}

// expectOnly checks that the reports up to marker's name marker alone.
func expectOnly(t *testing.T, w *Watcher, marker string, clk *clocktest.Fake) {
	t.Helper()
	if got := reportsUntil(t, w, marker, clk); slices.ContainsFunc(got, func(p string) bool { return p != marker }) {
		t.Fatalf("reported %v, want %s alone", got, marker)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestInPlaceWriteIsReportedAndSiblingsAreNot(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cert.pem")
	write(t, path, "v1")
	w := open(t, Config{})
	w.Set([]string{path})
	if got := w.watchedDirs(); !slices.Equal(got, []string{dir}) {
		t.Fatalf("watching %v, want only the parent directory %s", got, dir)
	}

	// The sibling first: were it reported, it would be before the file
	// or with it.
	write(t, filepath.Join(dir, "other.pem"), "x")
	write(t, path, "v2")
	expectOnly(t, w, path, nil)
}

func TestRenameOverIsReported(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cert.pem")
	write(t, path, "v1")
	w := open(t, Config{})
	w.Set([]string{path})

	for i := range 3 {
		filewatchtest.RenameOver(t, path, []byte{byte('a' + i)})
		waitReport(t, w, path)
	}
}

func TestDeleteAndRecreateAreReported(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cert.pem")
	write(t, path, "v1")
	w := open(t, Config{})
	w.Set([]string{path})

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitReport(t, w, path)
	write(t, path, "v2")
	waitReport(t, w, path)
	write(t, path, "v3")
	waitReport(t, w, path)
}

func TestDirectoryRemovedAndRecreated(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "certs")
	path := filepath.Join(dir, "cert.pem")
	write(t, path, "v1")
	w := open(t, Config{})
	w.Set([]string{path})

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	waitReport(t, w, path)
	write(t, path, "v2")
	waitReport(t, w, path)
	// The new directory is watched, not the removed one.
	write(t, path, "v3")
	waitReport(t, w, path)

	// Moved away and back: the directory is the same, its watch is not.
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	waitReport(t, w, path)
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	waitReport(t, w, path)
	write(t, path, "v4")
	waitReport(t, w, path)

	// The same, faster than the watcher handles the first event.
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	waitReport(t, w, path)
	write(t, path, "v5")
	waitReport(t, w, path)
}

func TestKubeletAtomicSwapsAreReportedEveryTime(t *testing.T) {
	dir := t.TempDir()
	filewatchtest.KubeletWrite(t, dir, map[string][]byte{"tls.crt": []byte("0"), "tls.key": []byte("0")})
	crt, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	w := open(t, Config{})
	w.Set([]string{crt, key})

	for i := 1; i <= 6; i++ {
		filewatchtest.KubeletWrite(t, dir, map[string][]byte{"tls.crt": {byte(i)}, "tls.key": {byte(i)}})
		waitReport(t, w, crt)
		// The watches follow the swap: the parent and the current
		// timestamped directory, never a removed one or a file.
		target, err := os.Readlink(filepath.Join(dir, "..data"))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := w.watchedDirs(), []string{dir, filepath.Join(dir, target)}; !slices.Equal(got, want) {
			t.Fatalf("after swap %d watching %v, want %v", i, got, want)
		}
	}
	// A write inside the current timestamped directory (not kubelet's
	// way, but some tools do it) is seen too.
	write(t, filepath.Join(dir, "..data", "tls.key"), "in place")
	waitReport(t, w, key)
}

func TestSymlinkChainAcrossDirectories(t *testing.T) {
	// /a/cert.pem -> /b/current -> /c/v1 (a CSI-style chain): the path
	// changes when any link in the chain is repointed.
	root := t.TempDir()
	a, b, c := filepath.Join(root, "a"), filepath.Join(root, "b"), filepath.Join(root, "c")
	write(t, filepath.Join(c, "v1", "cert.pem"), "v1")
	write(t, filepath.Join(c, "v2", "cert.pem"), "v2")
	for _, d := range []string{a, b} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(c, "v1"), filepath.Join(b, "current")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(a, "cert.pem")
	if err := os.Symlink(filepath.Join(b, "current", "cert.pem"), path); err != nil {
		t.Fatal(err)
	}
	w := open(t, Config{})
	w.Set([]string{path})
	if got, want := w.watchedDirs(), []string{a, b, filepath.Join(c, "v1")}; !slices.Equal(got, want) {
		t.Fatalf("watching %v, want %v", got, want)
	}

	// Repoint the middle link atomically.
	tmp := filepath.Join(b, "current.tmp")
	if err := os.Symlink(filepath.Join(c, "v2"), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(b, "current")); err != nil {
		t.Fatal(err)
	}
	waitReport(t, w, path)
	if got, want := w.watchedDirs(), []string{a, b, filepath.Join(c, "v2")}; !slices.Equal(got, want) {
		t.Fatalf("after repointing, watching %v, want %v", got, want)
	}
	// The old target is no longer watched; the new one is.
	write(t, filepath.Join(c, "v1", "cert.pem"), "stale")
	write(t, filepath.Join(c, "v2", "cert.pem"), "v2 again")
	if got := reportsUntil(t, w, path, nil); len(got) != 1 {
		t.Fatalf("reported %v, want %s once (for the write to v2 only)", got, path)
	}
}

func TestWriteInStepsIsReportedOnce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cert.pem")
	write(t, path, "v1")
	marker := filepath.Join(dir, "marker.pem")
	write(t, marker, "m1")
	// The steps are 10 ms apart, the debounce 20 times that: on the real
	// clock, as the steps happen in real time.
	w := open(t, Config{Debounce: 200 * time.Millisecond})
	w.Set([]string{path, marker})

	filewatchtest.WriteInSteps(t, path, []byte(strings.Repeat("x", 4096)), 4, 10*time.Millisecond)
	write(t, marker, "m2")
	if got := reportsUntil(t, w, marker, nil); !slices.Equal(got, []string{path, marker}) {
		t.Fatalf("reported %v, want %s once, with or before the later write to %s", got, path, marker)
	}
}

func TestSteadyEventsAreReportedWithinMaxDelay(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cert.pem")
	write(t, path, "v1")
	clk := clocktest.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	const step, maxDelay = 40 * time.Millisecond, 150 * time.Millisecond
	w := open(t, Config{Clock: clk, Debounce: 50 * time.Millisecond, MaxDelay: maxDelay})
	w.Set([]string{path})
	if !clk.WaitForTimers(1, waitLimit) {
		t.Fatal("no resync timer while a path is watched")
	}

	// A write every 40 ms of the fake clock, less than the debounce: the
	// debounce alone would never end. The first write is seen (its
	// debounce timer is pending) before the clock moves; any timer it or
	// a later write sets is due by first+MaxDelay.
	first := clk.Now()
	for i := 0; ; i++ {
		write(t, path, fmt.Sprint("v", i+2))
		if i == 0 && !clk.WaitForTimers(2, waitLimit) {
			t.Fatal("the first write was not seen")
		}
		clk.Advance(step)
		if clk.Now().Sub(first) < maxDelay {
			continue
		}
		select {
		case batch := <-w.Changes():
			if !slices.Equal(batch, []string{path}) {
				t.Fatalf("reported %v, want %s", batch, path)
			}
			return
		case <-time.After(waitLimit):
			t.Fatalf("not reported %s after the first of steady writes (MaxDelay %s)", clk.Now().Sub(first), maxDelay)
		}
	}
}

func TestMissingFileIsReportedWhenItAppears(t *testing.T) {
	root := t.TempDir()
	path := filepath.Join(root, "not", "yet", "cert.pem")
	w := open(t, Config{})
	w.Set([]string{path})
	if got := w.watchedDirs(); !slices.Equal(got, []string{root}) {
		t.Fatalf("watching %v, want the deepest existing directory %s", got, root)
	}
	write(t, path, "v1")
	waitReport(t, w, path)
	if got := w.watchedDirs(); !slices.Equal(got, []string{filepath.Dir(path)}) {
		t.Fatalf("watching %v once the file exists, want its directory", got)
	}
}

func TestSetRemovesWatches(t *testing.T) {
	dir1, dir2 := t.TempDir(), t.TempDir()
	p1, p2 := filepath.Join(dir1, "a.pem"), filepath.Join(dir2, "b.pem")
	write(t, p1, "1")
	write(t, p2, "2")
	w := open(t, Config{})
	w.Set([]string{p1, p2})
	w.Set([]string{p2})
	if got := w.watchedDirs(); !slices.Equal(got, []string{dir2}) {
		t.Fatalf("watching %v, want %s only", got, dir2)
	}
	write(t, p1, "changed")
	write(t, p2, "changed")
	expectOnly(t, w, p2, nil)
	w.Set(nil)
	if got := w.watchedDirs(); len(got) != 0 {
		t.Fatalf("watching %v after Set(nil)", got)
	}
}

func TestResyncCatchesChangesEventsMiss(t *testing.T) {
	// Swapping a directory above the watched one sends no event to the
	// watch: only the periodic resync sees it, and moves the watch.
	root := t.TempDir()
	path := filepath.Join(root, "mnt", "certs", "cert.pem")
	marker := filepath.Join(t.TempDir(), "marker.pem") // a directory of its own, not root
	write(t, path, "v1")
	write(t, marker, "m1")
	clk := clocktest.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	w := open(t, Config{Clock: clk, Resync: time.Minute})
	w.Set([]string{path, marker})
	if !clk.WaitForTimers(1, waitLimit) {
		t.Fatal("no resync timer while a path is watched")
	}

	if err := os.Rename(filepath.Join(root, "mnt"), filepath.Join(root, "mnt.old")); err != nil {
		t.Fatal(err)
	}
	write(t, path, "v2")
	// The marker's write is seen; the swap and the write were not (the
	// clock moves by debounces only, far from the resync).
	write(t, marker, "m2")
	expectOnly(t, w, marker, clk)

	clk.Advance(time.Minute)
	waitReport(t, w, path)

	// The watch now follows the new directory. A write may give several
	// events, each restarting the debounce timer: keep moving the clock
	// until the report comes.
	write(t, path, "v3")
	if !clk.WaitForTimers(2, waitLimit) { // resync and debounce
		t.Fatal("the write to the new directory was not seen")
	}
	deadline := time.After(waitLimit)
	for {
		clk.Advance(debounce)
		select {
		case batch := <-w.Changes():
			if slices.Contains(batch, path) {
				return
			}
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatal("the write to the new directory was not reported")
		}
	}
}

func TestIdleWatcherHoldsNoTimer(t *testing.T) {
	clk := clocktest.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	w := open(t, Config{Clock: clk})
	path := filepath.Join(t.TempDir(), "cert.pem")
	w.Set([]string{path})
	if !clk.WaitForTimers(1, waitLimit) {
		t.Fatal("no resync timer while a path is watched")
	}
	w.Set(nil)
	if !clk.WaitForNoTimers(waitLimit) {
		t.Fatalf("%d timers pending with nothing watched", clk.Timers())
	}
}

func TestResolve(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "real", "f"), "x")
	if err := os.Symlink("real", filepath.Join(root, "rel")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "loop"), filepath.Join(root, "loop")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		path      string
		wantNames []string
		wantDirs  []string
	}{
		{"plain file", filepath.Join(root, "real", "f"), []string{filepath.Join(root, "real", "f")}, []string{filepath.Join(root, "real")}},
		{"relative link in the middle", filepath.Join(root, "rel", "f"),
			[]string{filepath.Join(root, "rel"), filepath.Join(root, "real", "f")}, []string{root, filepath.Join(root, "real")}},
		{"missing directory", filepath.Join(root, "nope", "f"), []string{filepath.Join(root, "nope", "f")}, []string{root}},
		{"file used as directory", filepath.Join(root, "real", "f", "g"), []string{filepath.Join(root, "real", "f", "g")}, []string{filepath.Join(root, "real")}},
		{"dot dot", filepath.Join(root, "real") + "/../real/f", []string{filepath.Join(root, "real", "f")}, []string{filepath.Join(root, "real")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := resolve(tt.path)
			if !slices.Equal(c.names, tt.wantNames) || !slices.Equal(c.dirs, tt.wantDirs) {
				t.Fatalf("resolve(%s) = names %v dirs %v, want %v %v", tt.path, c.names, c.dirs, tt.wantNames, tt.wantDirs)
			}
		})
	}
	t.Run("loop ends", func(t *testing.T) {
		c := resolve(filepath.Join(root, "loop"))
		if len(c.names) == 0 || len(c.dirs) != 1 || c.dirs[0] != root {
			t.Fatalf("resolve(loop) = %+v", c)
		}
	})
}
