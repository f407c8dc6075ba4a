// Package logtest records a zap logger's entries for tests, and lets a
// test wait until the entries it expects were written instead of polling.
package logtest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Logs is the entries a logger from New wrote so far.
type Logs struct {
	*observer.ObservedLogs

	mu      sync.Mutex
	changed chan struct{} // closed and replaced after each entry
}

// New returns a logger at level and the entries it writes.
func New(level zapcore.LevelEnabler) (*zap.Logger, *Logs) {
	core, l := NewCore(level)
	return zap.New(core), l
}

// NewCore returns a core at level, for a test that tees it with others,
// and the entries it writes.
func NewCore(level zapcore.LevelEnabler) (zapcore.Core, *Logs) {
	core, observed := observer.New(level)
	l := &Logs{ObservedLogs: observed, changed: make(chan struct{})}
	// Hooks run after the observer has recorded the entry.
	return zapcore.RegisterHooks(core, l.written), l
}

func (l *Logs) written(zapcore.Entry) error {
	l.mu.Lock()
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	return nil
}

// WaitUntil blocks until ok holds for the entries, checking after each
// new one, and fails t with what if limit passes first.
func (l *Logs) WaitUntil(t testing.TB, limit time.Duration, what string, ok func(*observer.ObservedLogs) bool) {
	t.Helper()
	stop := time.NewTimer(limit)
	defer stop.Stop()
	for {
		l.mu.Lock()
		changed := l.changed
		l.mu.Unlock()
		if ok(l.ObservedLogs) {
			return
		}
		select {
		case <-changed:
		case <-stop.C:
			t.Fatalf("after %s: %s; logs: %v", limit, what, l.All())
		}
	}
}

// WaitForMessage blocks until at least n entries with msg were written
// and returns them, failing t if limit passes first.
func (l *Logs) WaitForMessage(t testing.TB, msg string, n int, limit time.Duration) []observer.LoggedEntry {
	t.Helper()
	l.WaitUntil(t, limit, fmt.Sprintf("want %d lines %q", n, msg), func(o *observer.ObservedLogs) bool {
		return o.FilterMessage(msg).Len() >= n
	})
	return l.FilterMessage(msg).All()
}
