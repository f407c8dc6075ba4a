package main

import "math"

// Outage is an interval [From, To) in virtual ms during which the CA is
// down: connections are refused.
type Outage struct{ From, To int64 }

// CA is the certificate authority: it signs Capacity CSRs per second in
// arrival order; a CSR that would wait longer than Deadline for its turn
// fails at Deadline without using capacity (the caller's deadline expired
// and the server drops cancelled requests before signing).
type CA struct {
	Capacity float64
	Deadline int64
	Outages  []Outage
	nextFree float64 // virtual ms at which the signer is next free
}

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
// done, or failed at done.
func (c *CA) submit(t int64) (done int64, ok bool) {
	svc := 1000 / c.Capacity
	start := max(float64(t), c.nextFree)
	end := start + svc
	if end-float64(t) > float64(c.Deadline) {
		return t + c.Deadline, false
	}
	fin := int64(math.Ceil(end))
	if down := c.nextOutage(t); fin >= down {
		return down, false // the CA went down with the request queued
	}
	c.nextFree = end
	return fin, true
}
