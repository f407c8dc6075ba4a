package main

import (
	"math"
	"time"
)

// Proposal is a change to our retry policy that this simulation suggests;
// it is NOT the agent's code (package cache is). Ours retries a renewal
// past its time at most 30s apart, and at most 2s apart once expired, and
// a probing agent sends its CSR the moment the CA is reachable: right for
// a CA that is down, wrong for one that is up and overloaded, where fast
// retries only turn its capacity into rejections. The proposal keeps ours
// while the CA is down, and when the CA answered but failed the CSR
// (deadline exceeded, overload):
//   - backs off with full jitter from 0.5s doubling to 10 min, bounded by a
//     tenth of the time left (so ten attempts still fit before expiry),
//     and by 30s once expired: agents with hours left make way for those
//     about to expire;
//   - after a probe finds the CA back, waits a uniform share of that same
//     bound before the CSR instead of sending at once.
type Proposal struct{ Ours }

// NewProposal returns the proposal with the agent's defaults.
func NewProposal() *Proposal { return &Proposal{*NewOurs()} }

// Name implements Policy.
func (*Proposal) Name() string { return "proposal" }

const proposalMax = 10 * time.Minute

// bound is the longest wait at now for an agent whose CSR the CA failed.
func (p *Proposal) bound(a *Agent, now int64, attempt int32) int64 {
	ceil := float64(p.Retry.Initial.Milliseconds()) * math.Exp2(float64(max(attempt, 1)-1))
	ceil = min(ceil, float64(proposalMax.Milliseconds()))
	switch {
	case !a.HasCert || now >= a.NotAfter:
		ceil = min(ceil, float64(p.Retry.Max.Milliseconds()))
	default:
		ceil = min(ceil, max(float64(a.NotAfter-now)/10, 1000))
	}
	return int64(ceil)
}

// Wake implements Policy: as ours, but a probe that finds the CA back
// spreads the CSR over the bound instead of sending it at once.
func (p *Proposal) Wake(s *Sim, a *Agent, now int64) (bool, int64) {
	if a.Probing && now >= a.ProbeAt {
		s.Probe(a.ProbeAt)
		a.Probing = false
		return false, now + max(int64(a.rng.Float64()*float64(p.bound(a, now, a.Failures))), 100)
	}
	return p.Ours.Wake(s, a, now)
}

// Failed implements Policy.
func (p *Proposal) Failed(s *Sim, a *Agent, now int64) int64 {
	if !s.CA.Up(now) {
		return p.Ours.Failed(s, a, now)
	}
	a.Failures++
	a.Probing = false
	return now + max(int64(a.rng.Float64()*float64(p.bound(a, now, a.Failures))), 100)
}
