package ratelog

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
)

func TestLimiterWindows(t *testing.T) {
	clk := clocktest.New(time.Unix(1000, 0))
	l := NewLimiter(clk, 3, time.Second)
	allowed := func() int {
		n := 0
		for range 10 {
			if l.Allow() {
				n++
			}
		}
		return n
	}
	if n := allowed(); n != 3 {
		t.Fatalf("first window allowed %d, want 3", n)
	}
	clk.Advance(999 * time.Millisecond)
	if n := allowed(); n != 0 {
		t.Fatalf("same window allowed %d more, want 0", n)
	}
	clk.Advance(time.Millisecond)
	if n := allowed(); n != 3 {
		t.Fatalf("next window allowed %d, want 3", n)
	}
	// A clock that jumps back starts a new window rather than blocking.
	clk.Set(time.Unix(10, 0))
	if n := allowed(); n != 3 {
		t.Fatalf("after a backward jump allowed %d, want 3", n)
	}
}

func TestLoggerSummarizesSuppressedLines(t *testing.T) {
	clk := clocktest.New(time.Unix(1000, 0))
	core, logs := observer.New(zapcore.InfoLevel)
	r := NewLogger(zap.New(core), zapcore.WarnLevel, NewLimiter(clk, 5, time.Second))
	client := NewLimiter(clk, 2, time.Minute)
	other := NewLimiter(clk, 2, time.Minute)

	for range 100 {
		r.Log(client, "unknown resource name requested", zap.String("k", "v"))
	}
	select {
	case <-r.Pending():
	default:
		t.Fatal("no pending signal after lines were refused")
	}
	for range 10 {
		r.Log(other, "nack received")
	}
	// client: 2 pass; other: 2 pass; overall allowed 4 of its 5.
	if got := logs.FilterMessage("unknown resource name requested").Len(); got != 2 {
		t.Fatalf("client lines = %d, want 2", got)
	}
	if got := logs.FilterMessage("nack received").Len(); got != 2 {
		t.Fatalf("other client's lines = %d, want 2 (its own budget)", got)
	}
	if got := logs.FilterMessage(SuppressedMessage).Len(); got != 1 {
		// The second "nack received" line flushed the 98 refused ones.
		t.Fatalf("summaries = %d, want 1", got)
	}
	clk.Advance(time.Minute)
	r.Log(nil, "nack received")
	r.Flush()
	var total int64
	for _, e := range logs.FilterMessage(SuppressedMessage).All() {
		total += e.ContextMap()["suppressed"].(int64)
		if e.Level != zapcore.WarnLevel {
			t.Errorf("summary at %v, want the lines' level", e.Level)
		}
	}
	if total != 98+8 {
		t.Fatalf("suppressed in summaries = %d, want %d", total, 98+8)
	}
	// Nothing pending: Flush writes nothing.
	n := logs.Len()
	r.Flush()
	if logs.Len() != n {
		t.Fatal("Flush wrote a summary with nothing suppressed")
	}
}

func TestLoggerDisabledLevel(t *testing.T) {
	clk := clocktest.New(time.Unix(1000, 0))
	core, logs := observer.New(zapcore.InfoLevel)
	overall := NewLimiter(clk, 1, time.Second)
	r := NewLogger(zap.New(core), zapcore.DebugLevel, overall)
	if r.Enabled() || r.Allow(nil, "x") {
		t.Fatal("debug lines allowed at info level")
	}
	r.Flush()
	if logs.Len() != 0 {
		t.Fatal("disabled logger wrote")
	}
	if !overall.Allow() {
		t.Fatal("a disabled level used up the limiter")
	}
}

func TestCut(t *testing.T) {
	short := strings.Repeat("a", MaxLen)
	if Cut(short) != short {
		t.Fatal("a short string was cut")
	}
	long := strings.Repeat("b", 1<<20)
	other := long[:len(long)-1] + "c"
	got := Cut(long)
	if len(got) > MaxLen+64 || !strings.HasPrefix(got, strings.Repeat("b", MaxLen)) || !strings.Contains(got, "1048576 bytes") {
		t.Fatalf("Cut(1 MiB) = %q", got)
	}
	if Cut(other) == got {
		t.Fatal("two long strings with the same prefix cut to the same text")
	}
	names := make([]string, 100)
	for i := range names {
		names[i] = long
	}
	all := CutAll(names)
	if len(all) != MaxList+1 || all[MaxList] != "...(92 more)" {
		t.Fatalf("CutAll = %d items, last %q", len(all), all[len(all)-1])
	}
}
