package cache

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestWatchedFilesLimit: names that would make the agent watch more
// distinct files than the limit are not served, each with an error in
// NameErrors; names served first keep their files.
func TestWatchedFilesLimit(t *testing.T) {
	h := newFileHarness(t, func(c *Config) { c.MaxWatchedFiles = 3 })
	dir := t.TempDir()
	root := func(n string) string { return FileRootPrefix + filepath.Join(dir, n) }
	pair := FileCertPrefix + filepath.Join(dir, "tls.crt") + "~" + filepath.Join(dir, "tls.key")
	limited := func(name string) bool {
		return strings.Contains(h.mgr.NameErrors()[name], "--max-watched-files")
	}
	rejections := func() float64 {
		return testutil.ToFloat64(h.metrics.LimitRejections.WithLabelValues("watched_files"))
	}

	h.mgr.SetDemand([]string{root("a"), root("b")})
	h.mgr.SetDemand([]string{root("a"), root("b"), root("c"), root("d"), pair})
	for name, want := range map[string]bool{root("a"): false, root("b"): false, root("c"): false, root("d"): true, pair: true} {
		if limited(name) != want {
			t.Errorf("%s over the limit = %v, want %v (errors %v)", name, !want, want, h.mgr.NameErrors())
		}
	}
	if got := rejections(); got != 2 {
		t.Errorf("rejections = %v, want 2", got)
	}
	// The same demand again is not counted again.
	h.mgr.SetDemand([]string{root("a"), root("b"), root("c"), root("d"), pair})
	if got := rejections(); got != 2 {
		t.Errorf("rejections after the same demand = %v, want 2", got)
	}
	// A name dropped makes room.
	h.mgr.SetDemand([]string{root("b"), root("c"), root("d")})
	if limited(root("d")) {
		t.Errorf("%s still over the limit: %v", root("d"), h.mgr.NameErrors())
	}
}
