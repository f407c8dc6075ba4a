package logtest

import (
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestWaitForMessageWakesOnWrite: a line written by another goroutine
// after the wait began ends the wait, and its fields are recorded.
func TestWaitForMessageWakesOnWrite(t *testing.T) {
	log, logs := New(zapcore.InfoLevel)
	start := make(chan struct{})
	go func() {
		<-start
		log.Info("other")
		log.With().Info("ready")
	}()
	close(start)
	got := logs.WaitForMessage(t, "ready", 1, time.Minute)
	if len(got) != 1 || logs.Len() != 2 {
		t.Fatalf("got %v, all %v", got, logs.All())
	}
}

type recorder struct {
	testing.TB
	fatal string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(f string, args ...any) {
	r.fatal = fmt.Sprintf(f, args...)
	panic(r)
}

// TestWaitUntilFailsAtTheLimit: a condition that never holds fails the
// test with what was awaited, and below the logger's level nothing counts.
func TestWaitUntilFailsAtTheLimit(t *testing.T) {
	log, logs := New(zapcore.WarnLevel)
	log.Info("ready")
	r := &recorder{TB: t}
	func() {
		defer func() {
			if p := recover(); p != r {
				panic(p)
			}
		}()
		logs.WaitUntil(r, 10*time.Millisecond, "ready logged", func(o *observer.ObservedLogs) bool {
			return o.FilterMessage("ready").Len() > 0
		})
	}()
	if r.fatal == "" {
		t.Fatal("WaitUntil returned without the condition")
	}
}
