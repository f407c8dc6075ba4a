package main

import "math"

// Outage is an interval [From, To) in virtual ms during which the CA is
// down: connections are refused.
type Outage struct{ From, To int64 }

// CA is the certificate authority: it signs Capacity CSRs per second in
// arrival order; a CSR that would wait longer than Deadline for its turn
// fails at Deadline without using capacity (the caller's deadline expired
// and the server drops cancelled requests before signing). That is
// istiod, which has no bound of its own on its queue.
//
// With MaxPending set, the CA answers overload with pushback, as `sdsagent
// ca --max-pending-csrs` does: a CSR that finds MaxPending CSRs ahead of it
// is refused at once (ResourceExhausted, after a round trip, without using
// capacity) with a grpc-retry-pushback-ms that gives it the next free
// slot, slots being one signing time apart, within slotHorizon.
type CA struct {
	Capacity   float64
	Deadline   int64
	Outages    []Outage
	MaxPending int     // 0: no pushback, queue to the deadline
	nextFree   float64 // virtual ms at which the signer is next free
	lastSlot   float64 // the last slot given to a refused CSR
}

// pushbackRTT is how long a refusal with pushback takes to reach the
// agent: one round trip, no queue, no signature.
const pushbackRTT = 1

// slotHorizon is how far ahead the CA hands out slots, as `sdsagent ca`
// does (devca's slotHorizon): a caller refused when every slot within it
// is promised is told to come back at the horizon, and its own backoff
// decides when it does (so an expired agent comes before one with hours
// left), instead of being given a slot behind every other.
const slotHorizon = 10000

// Up reports whether the CA accepts connections at t.
func (c *CA) Up(t int64) bool {
	for _, o := range c.Outages {
		if t >= o.From && t < o.To {
			return false
		}
	}
	return true
}

// upAgain returns when the CA is up again after t (t itself if it is up).
func (c *CA) upAgain(t int64) int64 {
	for _, o := range c.Outages {
		if t >= o.From && t < o.To {
			return o.To
		}
	}
	return t
}

// nextOutage returns the start of the first outage after t, or MaxInt64.
func (c *CA) nextOutage(t int64) int64 {
	n := int64(math.MaxInt64)
	for _, o := range c.Outages {
		if o.From > t && o.From < n {
			n = o.From
		}
	}
	return n
}

// submit decides the fate of a CSR that reaches the CA at t: signed at
// done, or failed at done; pushback (ms, > 0) when the CA refused it for
// load and said when to come back.
func (c *CA) submit(t int64) (done int64, ok bool, pushback int64) {
	svc := 1000 / c.Capacity
	start := max(float64(t), c.nextFree)
	if c.MaxPending > 0 && start-float64(t) >= float64(c.MaxPending)*svc {
		slot := max(c.lastSlot, float64(t)) + svc
		if slot-float64(t) <= float64(slotHorizon) {
			c.lastSlot = slot
		} else {
			slot = float64(t + slotHorizon)
		}
		return t + pushbackRTT, false, max(int64(math.Ceil(slot-float64(t))), 1)
	}
	end := start + svc
	if end-float64(t) > float64(c.Deadline) {
		return t + c.Deadline, false, 0
	}
	fin := int64(math.Ceil(end))
	if down := c.nextOutage(t); fin >= down {
		return down, false, 0 // the CA went down with the request queued
	}
	c.nextFree = end
	return fin, true, 0
}
