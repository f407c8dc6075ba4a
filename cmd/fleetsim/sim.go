package main

import (
	"container/heap"
	"math/rand/v2"
	"time"
)

// Virtual time is in milliseconds from the start of a run (int64); the
// policies that call package cache convert it to time.Time with wall.

// simEpoch is what virtual time 0 is as a time.Time, for the cache calls.
var simEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// wall converts virtual milliseconds to a time.Time.
func wall(ms int64) time.Time { return simEpoch.Add(time.Duration(ms) * time.Millisecond) }

// virt converts a time.Time back to virtual milliseconds (rounded up, so
// that an agent never acts before the time its policy asked for).
func virt(t time.Time) int64 {
	d := t.Sub(simEpoch)
	ms := int64(d / time.Millisecond)
	if d%time.Millisecond > 0 {
		ms++
	}
	return ms
}

// msOf converts a duration to milliseconds, rounded up, at least 1.
func msOf(d time.Duration) int64 {
	ms := int64((d + time.Millisecond - 1) / time.Millisecond)
	return max(ms, 1)
}

// How a CSR failed, as the agent's error tells it (Agent.Fail).
const (
	failDown     uint8 = iota // connection refused: the CA is down
	failDeadline              // the CA took the call, no answer in time
	failPushback              // ResourceExhausted with a pushback
)

// event kinds of an agent's one pending event.
const (
	evWake    uint8 = iota // the policy's next attempt (or check) is due
	evOK                   // the CA answered the pending CSR with a certificate
	evFail                 // the pending CSR failed (CA down, or over its deadline)
	evRestart              // the pod restarts: certificate and state are lost
)

// Agent is one simulated node agent: its certificate and the state its
// policy keeps between attempts. Times are virtual milliseconds.
type Agent struct {
	HasCert bool
	// NotBefore, NotAfter bound the current certificate.
	NotBefore, NotAfter int64
	// RenewAt is the current certificate's renewal time.
	RenewAt int64
	// Sent is when the last CSR was sent.
	Sent int64
	// Failures counts CSR attempts failed in a row (policy-defined).
	Failures int32
	// Fail is how the pending CSR failed; Pushback (ms) is the wait the
	// CA asked for with it, 0 if none.
	Fail     uint8
	Pushback int64
	// Burst counts calls within one Istio retry-interceptor burst.
	Burst int32
	// Probing marks an agent of our policy waiting for the CA to be
	// reachable again; ProbeAt is when its reconnect succeeds.
	Probing bool
	ProbeAt int64

	// wallNB, wallNA, wallRenew are NotBefore, NotAfter and RenewAt as
	// time.Time, converted once per certificate for the cache calls.
	wallNB, wallNA, wallRenew time.Time

	gen          uint32 // bumped on restart: older events are stale
	notReadyFrom int64  // -1 while ready
	rng          *rand.Rand
}

// Policy is how one kind of agent renews and retries. The simulator calls
// it for one agent at a time; it returns virtual times.
type Policy interface {
	// Name labels the policy in tables, CSVs and plots.
	Name() string
	// Issued is called when a CSR sent at a.Sent returned a certificate
	// at now (a.NotBefore, a.NotAfter are set). It returns when the
	// agent next wakes (its renewal, or its first check).
	Issued(s *Sim, a *Agent, now int64) int64
	// Started is called when a pod (re)starts without a certificate at
	// now. It returns when the first CSR goes out.
	Started(s *Sim, a *Agent, now int64) int64
	// Wake is called at the time the policy asked for. It returns true
	// to send a CSR now, or false and the next wake time.
	Wake(s *Sim, a *Agent, now int64) (send bool, next int64)
	// Failed is called when the pending CSR failed at now. It returns
	// the next wake time.
	Failed(s *Sim, a *Agent, now int64) int64
}

// Series are the per-second figures of a run, indexed by second.
type Series struct {
	Offered, Accepted, Rejected, Refused, Probes []int32
	NotReady, Expired                            []int32
}

// Totals are the counts of a whole run.
type Totals struct {
	Offered, Accepted, Rejected, Refused, Probes int64
	// PushedBack counts the rejections answered with a pushback (at once,
	// at no signing cost) among Rejected.
	PushedBack int64
	// ExpiredAgents counts certificates that reached NotAfter before being
	// replaced; InFlight the CSRs accepted but not yet signed at the end.
	ExpiredAgents, InFlight int64
	// CatchUp is the time of the last catch-up issuance (see Sim.Window);
	// 0 if none.
	CatchUp int64
}

// Sim is one run: a fleet of agents of one Policy against one CA.
type Sim struct {
	Policy Policy
	CA     *CA
	TTL    int64
	End    int64 // virtual ms at which the run stops
	Agents []Agent
	S      Series
	T      Totals
	// Events counts the events processed, for the performance figure.
	Events int64
	// Window is the disturbance (outage, restart wave) whose catch-up
	// is measured: CatchUp in Totals is the last certificate issued at
	// or after Window.From to an agent whose renewal was due before
	// Window.To, or that had none.
	Window Outage

	now            int64
	restarts       bool // a restart wave is scheduled
	ring           [ringSize][]entry
	used           [ringSize / 64]uint64 // bit set: ring bucket not empty
	nRing          int
	far            farHeap
	nrDiff, exDiff []int32
}

// NewSim returns a run of n agents over duration. Every agent starts
// with a certificate of lifetime ttl at a uniformly random phase of its
// policy's renewal cycle, as in a fleet that has been running for long.
func NewSim(p Policy, ca *CA, n int, ttl, duration time.Duration, seed uint64) *Sim {
	s := &Sim{Policy: p, CA: ca, TTL: ttl.Milliseconds(), End: duration.Milliseconds(), Agents: make([]Agent, n)}
	secs := int(s.End/1000) + 1
	s.S = Series{
		Offered: make([]int32, secs), Accepted: make([]int32, secs), Rejected: make([]int32, secs),
		Refused: make([]int32, secs), Probes: make([]int32, secs),
	}
	s.nrDiff = make([]int32, secs+1)
	s.exDiff = make([]int32, secs+1)
	root := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := range s.Agents {
		a := &s.Agents[i]
		a.rng = rand.New(rand.NewPCG(root.Uint64(), root.Uint64()))
		a.notReadyFrom = -1
		// A certificate issued at 0, then the whole agent moved back by a
		// random share of the time to its first wake-up.
		a.HasCert, a.NotBefore, a.NotAfter, a.Sent = true, 0, s.TTL, 0
		next := p.Issued(s, a, 0)
		shift := -int64(a.rng.Float64() * float64(next))
		a.NotBefore += shift
		a.NotAfter += shift
		a.RenewAt += shift
		a.Sent += shift
		a.syncWall()
		s.schedule(int32(i), next+shift, evWake)
	}
	return s
}

func (a *Agent) syncWall() {
	if !a.HasCert {
		a.wallNB, a.wallNA, a.wallRenew = time.Time{}, time.Time{}, time.Time{}
		return
	}
	a.wallNB, a.wallNA, a.wallRenew = wall(a.NotBefore), wall(a.NotAfter), wall(a.RenewAt)
}

// Rand is the agent's own random source.
func (a *Agent) Rand() *rand.Rand { return a.rng }

// ScheduleRestarts makes every agent restart at a uniformly random time in
// [from, from+within).
func (s *Sim) ScheduleRestarts(from, within int64, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 7))
	s.restarts = true
	for i := range s.Agents {
		t := from + int64(r.Float64()*float64(within))
		heap.Push(&s.far, farEvent{t, entry{id: int32(i), kind: evRestart}})
	}
}

func (s *Sim) schedule(id int32, t int64, kind uint8) {
	a := &s.Agents[id]
	t = max(t, s.now)
	e := entry{id: id, gen: a.gen, kind: kind}
	if t-s.now < ringSize {
		s.near(t, e)
		return
	}
	heap.Push(&s.far, farEvent{t, e})
}

// Run processes events until End, then closes the open intervals.
func (s *Sim) Run() {
	for s.now < s.End {
		// Move far events that are now near into the ring.
		for len(s.far) > 0 && s.far[0].t-s.now < ringSize {
			fe := heap.Pop(&s.far).(farEvent)
			s.near(max(fe.t, s.now), fe.e)
		}
		if s.nRing == 0 {
			if len(s.far) == 0 {
				break
			}
			s.now = min(s.far[0].t-ringSize+1, s.End)
			continue
		}
		next := s.nextUsed()
		if len(s.far) > 0 {
			next = min(next, s.far[0].t-ringSize+1)
		}
		if next > s.now {
			s.now = min(next, s.End)
			continue
		}
		b := &s.ring[s.now%ringSize]
		for i := 0; i < len(*b); i++ { // handlers may append to this bucket
			e := (*b)[i]
			s.nRing--
			if e.kind == evOK { // signed, even for a pod gone since
				s.S.Accepted[s.now/1000]++
				s.T.Accepted++
			}
			if e.kind == evRestart {
				s.restart(e.id)
				continue
			}
			if e.gen != s.Agents[e.id].gen {
				continue
			}
			s.Events++
			s.handle(e.id, e.kind)
		}
		*b = (*b)[:0]
		s.used[(s.now%ringSize)/64] &^= 1 << (s.now % ringSize % 64)
		s.now++
	}
	s.finish()
}

func (s *Sim) handle(id int32, kind uint8) {
	a := &s.Agents[id]
	now := s.now
	switch kind {
	case evWake:
		send, next := s.Policy.Wake(s, a, now)
		if send {
			s.send(id, now)
			return
		}
		s.schedule(id, next, evWake)
	case evOK:
		s.issued(a, now)
		next := s.Policy.Issued(s, a, now)
		a.syncWall()
		s.schedule(id, next, evWake)
	case evFail:
		s.schedule(id, s.whileDown(a, s.Policy.Failed(s, a, now)), evWake)
	}
}

// whileDown plays agent a's attempts from next on for as long as the CA
// is down, without the scheduler, and returns the first wake-up at which
// the CA is up. While the CA is down every CSR is refused and agents do
// not interact, so one agent's timeline can run ahead of the others':
// this is exact, and it makes long outages cheap to simulate. Restart
// waves move agents from outside, so runs with them take the slow path.
func (s *Sim) whileDown(a *Agent, next int64) int64 {
	if s.restarts {
		return next
	}
	for next < s.End && !s.CA.Up(next) {
		t := next
		s.Events++
		send, n := s.Policy.Wake(s, a, t)
		if !send {
			next = max(n, t)
			continue
		}
		a.Sent, a.Fail, a.Pushback = t, failDown, 0
		s.S.Refused[t/1000]++
		s.T.Refused++
		next = s.Policy.Failed(s, a, t+1) // as send: refused at t, seen at t+1
	}
	return next
}

// send makes agent id send a CSR at now.
func (s *Sim) send(id int32, now int64) {
	a := &s.Agents[id]
	a.Sent, a.Fail, a.Pushback = now, failDown, 0
	sec := now / 1000
	if !s.CA.Up(now) {
		s.S.Refused[sec]++
		s.T.Refused++
		s.schedule(id, now+1, evFail) // connection refused
		return
	}
	s.S.Offered[sec]++
	s.T.Offered++
	done, ok, pushback := s.CA.submit(now)
	if ok {
		s.schedule(id, done, evOK)
		return
	}
	a.Fail = failDeadline
	if pushback > 0 {
		a.Fail, a.Pushback = failPushback, pushback
		s.T.PushedBack++
	}
	s.T.Rejected++
	if done/1000 < int64(len(s.S.Rejected)) {
		s.S.Rejected[done/1000]++
	}
	s.schedule(id, done, evFail)
}

// Probe records a successful connection check of our policy at t: one
// TLS handshake with the CA, no CSR.
func (s *Sim) Probe(t int64) {
	if t/1000 < int64(len(s.S.Probes)) {
		s.S.Probes[t/1000]++
	}
	s.T.Probes++
}

// issued installs a new certificate signed at now.
func (s *Sim) issued(a *Agent, now int64) {
	if w := s.Window; w.To > 0 && now >= w.From &&
		(!a.HasCert || (a.NotBefore < w.From && a.RenewAt < w.To)) {
		s.T.CatchUp = max(s.T.CatchUp, now)
	}
	if a.notReadyFrom >= 0 {
		s.interval(s.nrDiff, a.notReadyFrom, now)
		a.notReadyFrom = -1
	}
	if a.HasCert && a.NotAfter < now {
		s.T.ExpiredAgents++
		s.interval(s.exDiff, max(a.NotAfter, 0), now)
		s.interval(s.nrDiff, max(a.NotAfter, 0), now)
	}
	a.HasCert, a.NotBefore, a.NotAfter = true, now, now+s.TTL
}

// restart makes agent id a new pod without a certificate at now.
func (s *Sim) restart(id int32) {
	a := &s.Agents[id]
	now := s.now
	a.gen++
	if a.HasCert && a.NotAfter < now {
		s.T.ExpiredAgents++
		s.interval(s.exDiff, max(a.NotAfter, 0), now)
		s.interval(s.nrDiff, max(a.NotAfter, 0), now)
	}
	if a.notReadyFrom < 0 {
		a.notReadyFrom = now
	}
	a.HasCert, a.NotBefore, a.NotAfter, a.RenewAt = false, 0, 0, 0
	a.Failures, a.Burst, a.Probing = 0, 0, false
	a.syncWall()
	s.schedule(id, s.Policy.Started(s, a, now), evWake)
}

// interval adds [from, to) to a per-second gauge's difference array.
func (s *Sim) interval(diff []int32, from, to int64) {
	if to <= from {
		return
	}
	diff[min(from/1000, int64(len(diff)-1))]++
	diff[min((to+999)/1000, int64(len(diff)-1))]--
}

// finish closes the intervals still open at End and derives the gauges.
func (s *Sim) finish() {
	end := s.End
	for i := range s.Agents {
		a := &s.Agents[i]
		if a.notReadyFrom >= 0 {
			s.interval(s.nrDiff, a.notReadyFrom, end)
		}
		if a.HasCert && a.NotAfter < end {
			s.T.ExpiredAgents++
			s.interval(s.exDiff, max(a.NotAfter, 0), end)
			if a.notReadyFrom < 0 {
				s.interval(s.nrDiff, max(a.NotAfter, 0), end)
			}
		}
	}
	s.S.NotReady = prefix(s.nrDiff, len(s.S.Offered))
	s.S.Expired = prefix(s.exDiff, len(s.S.Offered))
	// CSRs the CA accepted but had not answered by the end.
	for i := range s.ring {
		for _, e := range s.ring[i] {
			if e.kind == evOK {
				s.T.InFlight++
			}
		}
	}
	for _, fe := range s.far {
		if fe.e.kind == evOK {
			s.T.InFlight++
		}
	}
}

func prefix(diff []int32, n int) []int32 {
	out := make([]int32, n)
	var c int32
	for i := range n {
		c += diff[i]
		out[i] = c
	}
	return out
}
