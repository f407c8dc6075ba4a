package cache

import (
	"maps"
	"sync"

	"github.com/sdsagent/sdsagent/internal/clock"
)

// Store holds the published snapshot and notifies subscribers when it
// changes. It is safe for concurrent use.
type Store struct {
	clock clock.Clock

	mu   sync.Mutex
	snap *Snapshot
	subs map[chan struct{}]struct{}
}

// NewStore returns an empty store that stamps new content with clk.
func NewStore(clk clock.Clock) *Store {
	return &Store{
		clock: clk,
		snap:  &Snapshot{secrets: map[string]*Secret{}},
		subs:  map[chan struct{}]struct{}{},
	}
}

// Snapshot returns the current snapshot. It must not be modified.
func (s *Store) Snapshot() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

// Subscribe returns a channel that receives a value after every change
// (and once at once, so the subscriber reads the current state).
// Notifications coalesce: a slow reader sees one value for many changes and
// must read Snapshot to learn the state. cancel stops notifications.
func (s *Store) Subscribe() (updates <-chan struct{}, cancel func()) {
	ch := make(chan struct{}, 1)
	ch <- struct{}{}
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}
}

// Update publishes set and removes the names in remove, in one new
// snapshot. A secret whose content equals the one already published is
// skipped, so subscribers only hear of real changes. Update takes ownership
// of the secrets in set and stamps their UpdatedAt. It returns the names
// that changed.
func (s *Store) Update(set []*Secret, remove []string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var changed []string
	next := s.snap.secrets
	cloned := false
	clone := func() {
		if !cloned {
			next = maps.Clone(next)
			cloned = true
		}
	}
	for _, sec := range set {
		if old, ok := next[sec.Name]; ok && old.SameContent(sec) {
			continue
		}
		clone()
		sec.UpdatedAt = s.clock.Now()
		next[sec.Name] = sec
		changed = append(changed, sec.Name)
	}
	for _, name := range remove {
		if _, ok := next[name]; !ok {
			continue
		}
		clone()
		delete(next, name)
		changed = append(changed, name)
	}
	if len(changed) == 0 {
		return nil
	}
	s.snap = &Snapshot{secrets: next}
	s.notifyLocked()
	return changed
}

// notify wakes subscribers although the content did not change: what may
// be served from it did (the workload certificate expired).
func (s *Store) notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.notifyLocked()
}

func (s *Store) notifyLocked() {
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
