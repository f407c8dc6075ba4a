package sds

import (
	"slices"
	"testing"

	"github.com/sdsagent/sdsagent/cache"
)

// TestDemandGoesOnlyToConfigDemander checks there is no hidden type
// assertion left: a source with a SetDemand method is not told the demand
// unless it is Config.Demander.
func TestDemandGoesOnlyToConfigDemander(t *testing.T) {
	src := &demandSource{changed: make(chan struct{})}
	h := newHarnessWith(t, harnessOptions{noDemander: true, source: func(s *cache.Store) Source {
		src.testSource = testSource{s}
		return src
	}})
	const fc = "file-cert:/a~/b"
	sotw := h.openStream()
	if err := sotw.Request(def, fc); err != nil {
		t.Fatal(err)
	}
	// Stream waiters wake only after the demand has been handed out, so a
	// SetDemand call would be recorded by now.
	h.oneStream("the file name wanted", func(s StreamInfo) bool { return slices.Contains(s.Names, fc) })
	src.mu.Lock()
	defer src.mu.Unlock()
	if len(src.calls) != 0 {
		t.Fatalf("SetDemand called %q without Config.Demander", src.calls)
	}
}
