package filewatch

import (
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

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	// debounce is shorter than the default to keep tests fast.
	debounce = 30 * time.Millisecond
	// waitLimit bounds waiting for a report that must come.
	waitLimit = 5 * time.Second
	// quiet is how long a test waits to conclude that no report comes:
	// several debounce periods.
	quiet = 150 * time.Millisecond
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
			t.Fatalf("%s not reported within %s; watching %v", path, waitLimit, w.Dirs())
		}
	}
}

// expectQuiet fails if anything is reported for a short while.
func expectQuiet(t *testing.T, w *Watcher) {
	t.Helper()
	select {
	case batch := <-w.Changes():
		t.Fatalf("unexpected report %v", batch)
	case <-time.After(quiet):
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
	if got := w.Dirs(); !slices.Equal(got, []string{dir}) {
		t.Fatalf("watching %v, want only the parent directory %s", got, dir)
	}

	write(t, filepath.Join(dir, "other.pem"), "x")
	expectQuiet(t, w)

	write(t, path, "v2")
	waitReport(t, w, path)
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
		if got, want := w.Dirs(), []string{dir, filepath.Join(dir, target)}; !slices.Equal(got, want) {
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
	if got, want := w.Dirs(), []string{a, b, filepath.Join(c, "v1")}; !slices.Equal(got, want) {
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
	if got, want := w.Dirs(), []string{a, b, filepath.Join(c, "v2")}; !slices.Equal(got, want) {
		t.Fatalf("after repointing, watching %v, want %v", got, want)
	}
	// The old target is no longer watched; the new one is.
	write(t, filepath.Join(c, "v1", "cert.pem"), "stale")
	expectQuiet(t, w)
	write(t, filepath.Join(c, "v2", "cert.pem"), "v2 again")
	waitReport(t, w, path)
}

func TestWriteInStepsIsReportedOnce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cert.pem")
	write(t, path, "v1")
	w := open(t, Config{Debounce: 80 * time.Millisecond})
	w.Set([]string{path})

	filewatchtest.WriteInSteps(t, path, []byte(strings.Repeat("x", 4096)), 4, 15*time.Millisecond)
	waitReport(t, w, path)
	expectQuiet(t, w)
}

func TestSteadyEventsAreReportedWithinMaxDelay(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cert.pem")
	write(t, path, "v1")
	w := open(t, Config{Debounce: 50 * time.Millisecond, MaxDelay: 150 * time.Millisecond})
	w.Set([]string{path})

	start := time.Now()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				_ = os.WriteFile(path, []byte(time.Now().String()), 0o644)
			}
		}
	}()
	defer func() { close(stop); <-done }()
	waitReport(t, w, path)
	if took := time.Since(start); took > time.Second {
		t.Fatalf("reported after %s of steady writes, want within about MaxDelay (150ms)", took)
	}
}

func TestMissingFileIsReportedWhenItAppears(t *testing.T) {
	root := t.TempDir()
	path := filepath.Join(root, "not", "yet", "cert.pem")
	w := open(t, Config{})
	w.Set([]string{path})
	if got := w.Dirs(); !slices.Equal(got, []string{root}) {
		t.Fatalf("watching %v, want the deepest existing directory %s", got, root)
	}
	write(t, path, "v1")
	waitReport(t, w, path)
	if got := w.Dirs(); !slices.Equal(got, []string{filepath.Dir(path)}) {
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
	if got := w.Dirs(); !slices.Equal(got, []string{dir2}) {
		t.Fatalf("watching %v, want %s only", got, dir2)
	}
	write(t, p1, "changed")
	expectQuiet(t, w)
	w.Set(nil)
	if got := w.Dirs(); len(got) != 0 {
		t.Fatalf("watching %v after Set(nil)", got)
	}
}

func TestResyncCatchesChangesEventsMiss(t *testing.T) {
	// Swapping a directory above the watched one sends no event to the
	// watch: only the periodic resync sees it, and moves the watch.
	root := t.TempDir()
	path := filepath.Join(root, "mnt", "certs", "cert.pem")
	write(t, path, "v1")
	clk := clocktest.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	w := open(t, Config{Clock: clk, Resync: time.Minute})
	w.Set([]string{path})
	if !clk.WaitForTimers(1, waitLimit) {
		t.Fatal("no resync timer while a path is watched")
	}

	if err := os.Rename(filepath.Join(root, "mnt"), filepath.Join(root, "mnt.old")); err != nil {
		t.Fatal(err)
	}
	write(t, path, "v2")
	expectQuiet(t, w)

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
	deadline := time.Now().Add(waitLimit)
	for clk.Timers() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d timers pending with nothing watched", clk.Timers())
		}
		time.Sleep(time.Millisecond)
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
