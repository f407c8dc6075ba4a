// Package ratelog bounds the log lines that clients cause: a Limiter
// lets a fixed number of lines through per window, a Logger combines one
// overall limiter with an optional per-client one and reports what it
// refused in "log lines suppressed" summary lines, and Cut shortens
// client-supplied strings before they are logged.
//
// Limits apply to log lines only; callers count events in metrics before
// asking, so metrics stay exact.
package ratelog

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/sdsagent/sdsagent/internal/clock"
)

// Limiter lets at most burst events through in each window of length
// per (fixed windows: cheap, and the worst case is 2×burst in any span
// of per). It is safe for concurrent use.
type Limiter struct {
	clk   clock.Clock
	burst int
	per   time.Duration

	mu    sync.Mutex
	start time.Time
	n     int
}

// NewLimiter returns a limiter of burst events per window of per.
func NewLimiter(clk clock.Clock, burst int, per time.Duration) *Limiter {
	return &Limiter{clk: clk, burst: burst, per: per}
}

// Allow reports whether one more event may pass now, and counts it if so.
func (l *Limiter) Allow() bool {
	now := l.clk.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.start.IsZero() || now.Sub(l.start) >= l.per || now.Before(l.start) {
		l.start, l.n = now, 0
	}
	if l.n >= l.burst {
		return false
	}
	l.n++
	return true
}

// SuppressedMessage is the message of the summary line that reports
// refused lines; its fields are "message" (the refused lines' message)
// and "suppressed" (how many).
const SuppressedMessage = "log lines suppressed"

// Logger logs lines at one level through an overall limiter and, per
// call, an optional per-client one. Lines refused by either are counted
// by message and reported in a summary line before the next line that
// passes, or by Flush. It is safe for concurrent use.
type Logger struct {
	log     *zap.Logger
	level   zapcore.Level
	overall *Limiter

	mu         sync.Mutex
	suppressed map[string]int
	// pending receives a value when lines start being suppressed.
	pending chan struct{}
}

// NewLogger returns a Logger writing to log at level, through overall.
func NewLogger(log *zap.Logger, level zapcore.Level, overall *Limiter) *Logger {
	return &Logger{log: log, level: level, overall: overall, suppressed: map[string]int{}, pending: make(chan struct{}, 1)}
}

// Pending returns a channel that receives a value when a line is refused
// while no summary is pending, so that an owner can call Flush a little
// later even if no line passes to carry the summary.
func (r *Logger) Pending() <-chan struct{} { return r.pending }

// Enabled reports whether lines at the Logger's level are written at all.
// Callers skip the limiters and building fields when it is false.
func (r *Logger) Enabled() bool { return r.log.Core().Enabled(r.level) }

// Allow reports whether a line with message msg may be logged now; client
// is that client's limiter, or nil. When it returns true it has written
// the pending summaries, and the caller writes its line with Write. A
// refused line is counted under msg.
func (r *Logger) Allow(client *Limiter, msg string) bool {
	if !r.Enabled() {
		return false
	}
	if (client != nil && !client.Allow()) || !r.overall.Allow() {
		r.mu.Lock()
		first := len(r.suppressed) == 0
		r.suppressed[msg]++
		r.mu.Unlock()
		if first {
			select {
			case r.pending <- struct{}{}:
			default:
			}
		}
		return false
	}
	r.Flush()
	return true
}

// Write writes a line allowed by Allow.
func (r *Logger) Write(msg string, fields ...zap.Field) {
	if ce := r.log.Check(r.level, msg); ce != nil {
		ce.Write(fields...)
	}
}

// Log writes the line if Allow lets it; fields are built by the caller
// even when the line is refused, so hot paths use Allow and Write.
func (r *Logger) Log(client *Limiter, msg string, fields ...zap.Field) {
	if r.Allow(client, msg) {
		r.Write(msg, fields...)
	}
}

// Flush writes one summary line per message refused since the last
// summary, in message order.
func (r *Logger) Flush() {
	r.mu.Lock()
	if len(r.suppressed) == 0 {
		r.mu.Unlock()
		return
	}
	counts := r.suppressed
	r.suppressed = map[string]int{}
	r.mu.Unlock()
	for _, msg := range slices.Sorted(maps.Keys(counts)) {
		r.Write(SuppressedMessage, zap.String("message", msg), zap.Int("suppressed", counts[msg]))
	}
}

// MaxLen is how many bytes of a client-supplied string Cut keeps.
const MaxLen = 128

// Cut returns s if it is at most MaxLen bytes long, otherwise its first
// MaxLen bytes followed by its length and a short hash, so that two long
// names can still be told apart.
func Cut(s string) string { return CutN(s, MaxLen) }

// CutN is Cut with a limit of n bytes.
func CutN(s string, n int) string {
	if len(s) <= n {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return s[:n] + "...(" + strconv.Itoa(len(s)) + " bytes, sha256 " + hex.EncodeToString(sum[:6]) + ")"
}

// MaxList is how many items of a client-supplied list CutAll keeps.
const MaxList = 8

// CutAll returns the first MaxList items of names, each cut, and a last
// item saying how many were left out, if any.
func CutAll(names []string) []string {
	n := min(len(names), MaxList)
	out := make([]string, 0, n+1)
	for _, s := range names[:n] {
		out = append(out, Cut(s))
	}
	if len(names) > n {
		out = append(out, "...("+strconv.Itoa(len(names)-n)+" more)")
	}
	return out
}
