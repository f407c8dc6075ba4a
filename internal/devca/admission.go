package devca

import (
	"sync"
	"time"

	"github.com/sdsagent/sdsagent/internal/clock"
)

// DefaultMaxPendingCSRs is the default bound of Config.MaxPendingCSRs: a
// P-256 signature with the token check and gRPC takes a millisecond or
// two of CPU, so 100 CSRs in progress are already 0.1–0.2 s of work on a
// small machine, far more than a few local agents cause; beyond that a
// caller is better told when to come back than queued toward its
// deadline.
const DefaultMaxPendingCSRs = 100

// Bounds of the pushback the CA asks for.
const (
	// minSlot is the least spacing of the slots given to refused callers,
	// and so the least pushback: the service time measured on a fake
	// clock, or of a trivial request, can be zero.
	minSlot = time.Millisecond
	// serviceWeight is the weight of the newest handling time in the
	// moving mean of the handling time: a few dozen requests.
	serviceWeight = 1.0 / 16
	// slotHorizon is how far ahead slots are handed out: a caller refused
	// when every slot within it is promised is told to come back at the
	// horizon, and its own backoff decides when it does (an agent whose
	// certificate expired comes before one with hours left) instead of
	// queueing behind every other. 10s is what a caller would have waited
	// in a queue to its deadline (the agent's CA call timeout): a
	// pushback never costs more than queueing would have.
	slotHorizon = 10 * time.Second
	// overloadLogEvery bounds the log lines about requests refused for
	// load to one per interval: an overload must not flood the log too.
	overloadLogEvery = 10 * time.Second
)

// admission bounds the CSRs the CA works on at once and tells a caller
// over the bound when to come back: each refused caller gets the next free
// slot, slots being as far apart as one CSR takes divided by the CSRs
// handled at once, so that refused callers come back at the rate the CA
// signs; beyond slotHorizon it promises none. It is safe for concurrent
// use.
type admission struct {
	max int // 0: no bound
	clk clock.Clock

	mu      sync.Mutex
	pending int
	// service is the moving mean of one request's handling time.
	service time.Duration
	// lastSlot is the last time promised to a refused caller.
	lastSlot time.Time
}

func newAdmission(maxPending int, clk clock.Clock) *admission {
	return &admission{max: maxPending, clk: clk}
}

// enter admits a request, returning the function that ends it, or refuses
// it with the wait until its slot (a positive whole number of
// milliseconds) and the number of requests in progress.
func (a *admission) enter() (leave func(), pushback time.Duration, pending int) {
	now := a.clk.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.max > 0 && a.pending >= a.max {
		slot := max(a.service/time.Duration(a.max), minSlot)
		at := now.Add(slot)
		if a.lastSlot.After(now) {
			at = a.lastSlot.Add(slot)
		}
		wait := slotHorizon
		if at.Sub(now) <= slotHorizon {
			a.lastSlot, wait = at, at.Sub(now)
		}
		return nil, (wait + time.Millisecond - 1).Truncate(time.Millisecond), a.pending
	}
	a.pending++
	return func() {
		took := a.clk.Now().Sub(now)
		a.mu.Lock()
		defer a.mu.Unlock()
		a.pending--
		a.service += time.Duration(float64(took-a.service) * serviceWeight)
	}, 0, 0
}
