// Package peercred guards a Unix socket listener with the kernel's record
// of who connected (SO_PEERCRED): a connection whose uid and gid are both
// outside an allowlist is closed as it is accepted, before the server it
// guards reads or writes a single byte. File modes stop being the only
// boundary around what the socket serves: the check holds with a socket
// mode of 0666 in a world-readable directory.
//
// SO_PEERCRED carries the credentials the peer had when it called
// connect(2): its effective uid, its effective (primary) gid and its pid.
// Supplementary groups are not part of it, so an allowed gid matches only
// a process whose primary group it is.
package peercred

import (
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
)

// logInterval is the least time between two refusal log lines: a caller
// that reconnects in a loop cannot grow the log faster than this. Refusals
// in between are counted and reported with the next line.
const logInterval = time.Second

// Cred is what the kernel recorded about a connecting process.
type Cred struct {
	// PID is the process id at connect time.
	PID int32 `json:"pid"`
	// UID is the effective user id.
	UID uint32 `json:"uid"`
	// GID is the effective group id.
	GID uint32 `json:"gid"`
}

// Config configures a Listener.
type Config struct {
	// UIDs are the user ids that may connect.
	UIDs []uint32
	// GIDs are the group ids that may connect, matched against the
	// caller's primary group.
	GIDs []uint32
	// Clock paces the refusal log; default clock.Real().
	Clock clock.Clock
	// Logger receives a rate-limited line per refusal, under the name
	// "peercred"; default Nop.
	Logger *zap.Logger
	// Refused is incremented for every refused connection; may be nil.
	Refused prometheus.Counter
}

// Stats describes the check for operators (the debug endpoint).
type Stats struct {
	// AllowedUIDs are the user ids that may connect.
	AllowedUIDs []uint32 `json:"allowed_uids"`
	// AllowedGIDs are the group ids that may connect.
	AllowedGIDs []uint32 `json:"allowed_gids"`
	// Refused counts the connections closed since start.
	Refused uint64 `json:"refused"`
	// LastRefused is the last refused caller, nil before the first.
	LastRefused *Refusal `json:"last_refused,omitempty"`
}

// Refusal is one refused connection.
type Refusal struct {
	Cred
	// At is when it was refused.
	At time.Time `json:"at"`
	// Reason says why: not allowed, or credentials unreadable.
	Reason string `json:"reason"`
}

// Listener is a net.Listener whose Accept returns only connections from
// allowed callers. It is safe for concurrent use.
type Listener struct {
	net.Listener
	uids, gids []uint32
	clock      clock.Clock
	log        *zap.Logger
	refusedCtr prometheus.Counter

	mu         sync.Mutex
	refused    uint64
	last       *Refusal
	lastLog    time.Time
	suppressed uint64
}

// Wrap returns lis guarded by the allowlist in cfg. lis must be a Unix
// socket listener; an allowlist with neither uids nor gids is an error,
// since it would refuse every caller.
func Wrap(lis net.Listener, cfg Config) (*Listener, error) {
	if lis == nil {
		return nil, errors.New("peercred: nil listener")
	}
	if _, ok := lis.(*net.UnixListener); !ok {
		return nil, fmt.Errorf("peercred: %s listener: peer credentials need a Unix socket", lis.Addr().Network())
	}
	if len(cfg.UIDs) == 0 && len(cfg.GIDs) == 0 {
		return nil, errors.New("peercred: empty allowlist would refuse every caller; give at least one uid or gid")
	}
	if err := supported(); err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Listener{
		Listener:   lis,
		uids:       slices.Clone(cfg.UIDs),
		gids:       slices.Clone(cfg.GIDs),
		clock:      cfg.Clock,
		log:        cfg.Logger.Named("peercred"),
		refusedCtr: cfg.Refused,
	}, nil
}

// Accept waits for a connection from an allowed caller and returns it.
// Connections from other callers, and connections whose credentials
// cannot be read, are closed unread and counted; Accept then waits for
// the next one. Errors are those of the wrapped listener.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cred, err := Get(conn)
		if err == nil && l.Allowed(cred) {
			return conn, nil
		}
		// Recorded before the close, so a caller that sees EOF finds
		// its refusal counted.
		if err != nil {
			// (uid_t)-1 and (gid_t)-1, which no process has: unknown.
			l.refuse(Refusal{Cred: Cred{PID: -1, UID: math.MaxUint32, GID: math.MaxUint32}, Reason: err.Error()})
		} else {
			l.refuse(Refusal{Cred: cred, Reason: "uid and gid not allowed"})
		}
		_ = conn.Close()
	}
}

// Allowed reports whether a caller with cred may connect.
func (l *Listener) Allowed(cred Cred) bool {
	return slices.Contains(l.uids, cred.UID) || slices.Contains(l.gids, cred.GID)
}

// Stats returns the allowlist and the refusals so far.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := Stats{AllowedUIDs: slices.Clone(l.uids), AllowedGIDs: slices.Clone(l.gids), Refused: l.refused}
	if l.last != nil {
		last := *l.last
		s.LastRefused = &last
	}
	if s.AllowedUIDs == nil {
		s.AllowedUIDs = []uint32{}
	}
	if s.AllowedGIDs == nil {
		s.AllowedGIDs = []uint32{}
	}
	return s
}

// refuse records r, and logs it unless a line went out less than
// logInterval ago; the lines left out are counted in the next one.
func (l *Listener) refuse(r Refusal) {
	if l.refusedCtr != nil {
		l.refusedCtr.Inc()
	}
	now := l.clock.Now()
	r.At = now
	l.mu.Lock()
	l.refused++
	l.last = &r
	if !l.lastLog.IsZero() && now.Sub(l.lastLog) < logInterval {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := l.suppressed
	l.lastLog, l.suppressed = now, 0
	l.mu.Unlock()
	l.log.Warn("sds connection refused",
		zap.Uint32("uid", r.UID),
		zap.Uint32("gid", r.GID),
		zap.Int32("pid", r.PID),
		zap.String("reason", r.Reason),
		zap.Uint64("suppressed", suppressed),
		zap.Uint32s("allowed_uids", l.uids),
		zap.Uint32s("allowed_gids", l.gids),
	)
}
