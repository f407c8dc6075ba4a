package outagesim

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/metrics"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/sds"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// SeedEnv replays a run: SDSAGENT_SIM_SEED=<seed printed by a run>.
const SeedEnv = "SDSAGENT_SIM_SEED"

var seedFlag = flag.Uint64("sim.seed", 0, "seed of the outage simulation (0: "+SeedEnv+" or the default)")

// defaultSeed keeps `make test` deterministic; set the flag or the env
// var to explore others.
const defaultSeed = 20261201

const (
	simLength = 72 * time.Hour
	ttl       = time.Hour
	ratio     = 0.5
	// realLimit bounds every wait for the system under test in real
	// time; reaching it is a failure (a hang), not a timing assertion.
	realLimit = 20 * time.Second
)

func seed(t *testing.T) uint64 {
	if *seedFlag != 0 {
		return *seedFlag
	}
	if v := os.Getenv(SeedEnv); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", SeedEnv, v, err)
		}
		return s
	}
	return defaultSeed
}

// segment is a stretch of simulated time in one CA mode.
type segment struct {
	start time.Time
	mode  mode
}

// schedule draws alternating healthy stretches and outages, on whole
// minutes. An outage is short (under the 30m grace period), medium, or
// long enough to expire the certificate; its CA is down, hangs, or gives
// bad answers, changing every few minutes. Bad answers from a reachable
// CA last a minute at a time: once the certificate has expired they are
// retried every second or two, and the test must stay fast.
func schedule(rng *rand.Rand, start time.Time) []segment {
	minutes := func(lo, hi int) time.Duration { return time.Duration(lo+rng.IntN(hi-lo+1)) * time.Minute }
	at := start
	segs := []segment{{start, healthy}}
	at = at.Add(minutes(40, 120))
	for at.Before(start.Add(simLength)) {
		var length time.Duration
		switch r := rng.Float64(); {
		case r < 0.6:
			length = minutes(1, 25)
		case r < 0.85:
			length = minutes(25, 50)
		default:
			length = minutes(60, 180)
		}
		end := at.Add(length)
		for at.Before(end) {
			m, d := down, minutes(2, 45)
			switch r := rng.Float64(); {
			case r < 0.3:
				m = hang
			case r < 0.6:
				// A bad answer: any of the refused kinds, for a minute.
				m, d = mode(int(garbage)+rng.IntN(int(unauthenticated-garbage)+1)), time.Minute
			}
			segs = append(segs, segment{at, m})
			at = at.Add(d)
		}
		at = end
		healthyMode := healthy
		if rng.Float64() < 0.15 {
			healthyMode = shortTTL
		}
		segs = append(segs, segment{at, healthyMode})
		at = at.Add(minutes(10, 180))
	}
	return segs
}

// sdsClock tells the simulated time but keeps the SDS server's own timers
// (log summaries) off the simulated clock, whose timers are the manager's.
type sdsClock struct {
	*clocktest.Fake
	timers clock.Clock
}

func (c sdsClock) NewTimer(d time.Duration) clock.Timer { return c.timers.NewTimer(d) }

// attemptEnds are the log messages that end a CSR attempt, one per attempt.
var attemptEnds = map[string]bool{
	"workload certificate issued":                                      true,
	"workload certificate rotated":                                     true,
	"certificate request failed; no workload certificate to serve yet": true,
	"certificate renewal failed; serving the previous certificate":     true,
	"certificate renewal failed; workload certificate expired":         true,
}

const (
	expiredLine  = "workload certificate expired; renewal keeps trying"
	attemptStart = "certificate request sent"
)

type sim struct {
	t     *testing.T
	ctx   context.Context
	clk   *clocktest.Fake
	ca    *faultCA
	mgr   *cache.Manager
	conn  *grpc.ClientConn
	id    pki.ID
	segs  []segment
	start time.Time

	stream      *sdstest.Stream
	streamRoots *tlsv3.Secret // the last ROOTCA pushed on stream
	begun       atomic.Int64  // attempt-starting log lines
	ended       atomic.Int64  // attempt-ending log lines
	// events receives after every attempt start and end, and when a CA
	// call starts hanging.
	events chan struct{}
	errors atomic.Int64 // error log lines
	expiry atomic.Int64 // expiry error lines

	// What was last served, and when it was issued.
	cur        *cache.Secret
	curSince   time.Time
	wasExpired bool
	expiries   int

	checked *checked // the last default that passed checkSecret

	// Results.
	servedMinutes, notReadyMinutes, heldStreams, newStreams int
	recoveries                                              []time.Duration
	longestRecovery                                         time.Duration
	pending                                                 *recovery
	held                                                    *sdstest.Stream
}

// recovery is a CA that came back while the agent needed it.
type recovery struct {
	at   time.Time
	fast bool // the certificate was expired or in its last tenth, the CA down before
}

func TestOutageSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("72 simulated hours; skipped with -short")
	}
	s0 := seed(t)
	t.Logf("seed %d (replay: %s=%d go test -run TestOutageSimulation -v ./internal/outagesim/)", s0, SeedEnv, s0)
	rng := rand.New(rand.NewPCG(s0, 0x5d5a9e47))
	mgrRng := rand.New(rand.NewPCG(s0, 0x0c1a55e5))

	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	clk := clocktest.New(start)
	id, err := pki.WorkloadID("cluster.local", "default", "web")
	if err != nil {
		t.Fatal(err)
	}
	s := &sim{t: t, clk: clk, ca: newFaultCA(t, clk, start), id: id, segs: schedule(rng, start), start: start, events: make(chan struct{}, 1)}
	s.ca.onHang = s.signal
	hooks := zap.Hooks(func(e zapcore.Entry) error {
		switch {
		case attemptEnds[e.Message]:
			s.ended.Add(1)
			s.signal()
		case e.Message == attemptStart:
			s.begun.Add(1)
			s.signal()
		}
		if e.Level >= zapcore.ErrorLevel {
			s.errors.Add(1)
		}
		if e.Message == expiredLine {
			s.expiry.Add(1)
		}
		return nil
	})
	logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(discard{}), zapcore.DebugLevel), hooks)

	s.mgr, err = cache.New(cache.Config{
		ID: id, TTL: ttl, GraceRatio: ratio, GraceJitter: 0.01,
		Signer: s.ca, Clock: clk, Logger: logger, Metrics: metrics.New(nil),
		Rand: mgrRng.Float64,
		// The wake interval guards against a suspended host, which is
		// not simulated here; a long one saves a wake-up per minute.
		WakeInterval: 15 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sds.New(sds.Config{Source: s.mgr, Clock: sdsClock{clk, clocktest.New(start)}})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	lis, err := sds.Listen(filepath.Join(dir, "s"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.ctx = ctx
	done := make(chan error, 2)
	go func() { done <- s.mgr.Run(ctx) }()
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		}
	})
	s.conn, err = sdstest.Dial(ctx, filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.conn.Close() })
	s.stream = s.openStream()
	t.Cleanup(s.stream.Close)

	s.run()
	if s.held != nil {
		s.held.Close()
	}

	csrs, _, _ := s.ca.counts()
	t.Logf("seed %d: %s simulated, %d outage segments: served-valid minutes %d, not-ready minutes %d, CSRs sent %d, expiries %d, streams held while expired %d, new streams checked %d, recoveries %d, longest recovery %s",
		s0, simLength, len(s.segs), s.servedMinutes, s.notReadyMinutes, csrs, s.expiries, s.heldStreams, s.newStreams, len(s.recoveries), s.longestRecovery)
	t.Logf("CSRs by CA mode: %v", s.ca.byMode)
	// One error line per expiry, none per retry.
	if got := s.expiry.Load(); got != int64(s.expiries) || s.errors.Load() != got {
		t.Errorf("%d expiries, %d expiry log lines, %d error lines: want one error line per expiry and no other", s.expiries, got, s.errors.Load())
	}
	if t.Failed() {
		t.Logf("replay with %s=%d", SeedEnv, s0)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// run drives the simulated time to its end.
func (s *sim) run() {
	end := s.start.Add(simLength)
	nextMinute := s.start
	seg := 0 // the segment in force
	for {
		s.settle()
		now := s.clk.Now()
		s.observe(now)
		if !now.Before(nextMinute) {
			s.checkMinute(now)
			nextMinute = nextMinute.Add(time.Minute)
		}
		if !now.Before(end) || s.t.Failed() {
			return
		}
		if seg+1 < len(s.segs) && !now.Before(s.segs[seg+1].start) {
			seg++
			s.switchMode(s.segs[seg-1].mode, s.segs[seg].mode, now)
			continue
		}
		target := nextMinute
		if seg+1 < len(s.segs) && s.segs[seg+1].start.Before(target) {
			target = s.segs[seg+1].start
		}
		if at, ok := s.clk.NextDeadline(); ok && at.Before(target) {
			target = at
		}
		s.clk.Set(target)
	}
}

// signal wakes settle.
func (s *sim) signal() {
	select {
	case s.events <- struct{}{}:
	default:
	}
}

// settle waits until the manager is parked on the clock, or blocked in a
// hanging CA call that only the clock ends: every attempt it began has
// ended (or hangs) and it waits on a timer. An attempt logs its start
// before it sets its own timer, so a timer seen with no attempt open is
// the loop's.
func (s *sim) settle() {
	deadline := time.After(realLimit)
	for {
		timers := s.clk.Timers()
		_, _, hanging := s.ca.counts()
		open := s.begun.Load() - s.ended.Load()
		if open == int64(hanging) && timers >= 1 {
			return
		}
		if open == int64(hanging) {
			if !s.clk.WaitForTimers(1, realLimit) {
				s.t.Fatalf("at %s the manager does not park", s.sinceStart())
			}
			continue
		}
		select {
		case <-s.events:
		case <-deadline:
			s.t.Fatalf("at %s the manager did not settle: %d attempts open, %d hanging, %d timers",
				s.sinceStart(), open, hanging, s.clk.Timers())
		}
	}
}

func (s *sim) sinceStart() time.Duration { return s.clk.Now().Sub(s.start) }

// switchMode changes the CA at now. A probe waiting for a CA that comes
// back makes the manager send a CSR at once: wait for it.
func (s *sim) switchMode(from, to mode, now time.Time) {
	before, _, _ := s.ca.counts()
	waiters := s.ca.setMode(to)
	if from.failing() && !to.failing() {
		if st := s.mgr.Status(); st.Failures > 0 || s.mgr.Ready() != nil {
			fast := false
			if s.cur != nil {
				fast = from == down && cache.InLastTenth(now, s.cur.Certs[0].NotBefore, s.cur.NotAfter())
			}
			s.pending = &recovery{at: now, fast: fast}
		}
	}
	if to.failing() {
		s.pending = nil
	}
	if waiters > 0 && to != down {
		deadline := time.NewTimer(realLimit)
		defer deadline.Stop()
		for {
			started, next := s.ca.startedSince()
			if started > before {
				return
			}
			select {
			case <-next:
			case <-deadline.C:
				s.t.Fatalf("at %s the CA came back to %d waiting probes, but no CSR followed", s.sinceStart(), waiters)
			}
		}
	}
}

// observe follows the served workload certificate: every new one must be
// pushed on the open stream, valid; expiry must be reported once.
func (s *sim) observe(now time.Time) {
	cur, ok := s.mgr.Snapshot().Get(cache.WorkloadCertName)
	if ok && cur != s.cur {
		s.cur, s.curSince = cur, now
		s.checkPush(now, cur)
		if s.pending != nil {
			rec := now.Sub(s.pending.at)
			s.recoveries = append(s.recoveries, rec)
			s.longestRecovery = max(s.longestRecovery, rec)
			if s.pending.fast && rec > cache.RetryExpiredMax {
				s.t.Errorf("at %s: the CA came back after being down while the certificate was expired or in its last tenth, and the next certificate took %s (want at most %s)",
					s.sinceStart(), rec, cache.RetryExpiredMax)
			}
			s.pending = nil
		}
	}
	expired := ok && !now.Before(cur.NotAfter())
	if expired && !s.wasExpired {
		s.expiries++
	}
	s.wasExpired = expired
}

// checkPush receives on the long-lived stream until it carries cur, and
// checks and ACKs every response on the way, as Envoy would.
func (s *sim) checkPush(now time.Time, cur *cache.Secret) {
	s.recvDefault(s.stream, now, &s.streamRoots, cur.Certs[0], "the open stream")
}

// recvDefault receives on st, checking and ACKing every response as Envoy
// would, until one carries a default (want, if not nil). A response
// carries what changed: ROOTCA stays what *roots says until a new one
// comes.
func (s *sim) recvDefault(st *sdstest.Stream, now time.Time, roots **tlsv3.Secret, want *x509.Certificate, what string) {
	ctx, cancel := context.WithTimeout(s.ctx, realLimit)
	defer cancel()
	for {
		resp, err := st.Recv(ctx)
		if err != nil {
			s.t.Fatalf("at %s: %s got no valid default: %v", s.sinceStart(), what, err)
		}
		if r := resp.Secret(cache.RootCertName); r != nil {
			*roots = r
		}
		def := resp.Secret(cache.WorkloadCertName)
		if def == nil {
			if err := st.ACK(); err != nil {
				s.t.Fatalf("ack: %v", err)
			}
			continue
		}
		leaf, err := s.checkSecret(now, def, *roots)
		if err != nil {
			s.t.Errorf("at %s: %s got an invalid default: %v", s.sinceStart(), what, err)
			_ = st.NACK(err.Error())
			return
		}
		if err := st.ACK(); err != nil {
			s.t.Fatalf("ack: %v", err)
		}
		if want == nil || leaf.Equal(want) {
			return
		}
	}
}

// openStream opens a state-of-the-world stream for default and ROOTCA.
func (s *sim) openStream() *sdstest.Stream {
	st, err := sdstest.OpenStream(s.ctx, s.conn)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := st.Request(cache.WorkloadCertName, cache.RootCertName); err != nil {
		s.t.Fatal(err)
	}
	return st
}

// checkMinute checks what a new fetch and a new stream get at now: a
// valid default with ROOTCA and Ready() nil, or nothing and Ready() an
// error; and that not-ready follows only an outage longer than the
// grace period.
func (s *sim) checkMinute(now time.Time) {
	ready := s.mgr.Ready()
	ctx, cancel := context.WithTimeout(s.ctx, realLimit)
	defer cancel()
	resp, err := sdstest.Fetch(ctx, s.conn, []string{cache.WorkloadCertName, cache.RootCertName})
	var def, roots *tlsv3.Secret
	switch {
	case err == nil:
		def, roots = resp.Secret(cache.WorkloadCertName), resp.Secret(cache.RootCertName)
	case status.Code(err) == codes.NotFound:
	default:
		s.t.Fatalf("at %s: fetch: %v", s.sinceStart(), err)
	}
	if def != nil {
		if _, err := s.checkSecret(now, def, roots); err != nil {
			s.t.Errorf("at %s: a new fetch got an invalid default: %v", s.sinceStart(), err)
			return
		}
		if ready != nil {
			s.t.Errorf("at %s: a valid default is served but Ready = %v", s.sinceStart(), ready)
		}
		s.servedMinutes++
		if now.Sub(s.start)%time.Hour == 0 {
			// Once an hour a new stream too: its first answer is valid.
			st := s.openStream()
			var roots *tlsv3.Secret
			s.recvDefault(st, now, &roots, nil, "a new stream")
			st.Close()
			s.newStreams++
		}
		if s.held != nil {
			// A stream held while nothing valid existed is answered now.
			st := s.held
			s.held = nil
			var heldRoots *tlsv3.Secret
			s.recvDefault(st, now, &heldRoots, nil, "the stream held while nothing valid was served")
			st.Close()
		}
		return
	}
	s.notReadyMinutes++
	if ready == nil {
		s.t.Errorf("at %s: nothing valid is served but Ready() = nil", s.sinceStart())
	}
	if s.cur == nil {
		return // before the first certificate
	}
	if s.held == nil {
		s.held = s.openStream()
		s.heldStreams++
	}
	// Not ready: the CA must have given nothing usable through the whole
	// grace period of the expired certificate (save its last 2 minutes,
	// in which a hanging call may still be running).
	life := s.cur.NotAfter().Sub(s.curSince)
	from := s.cur.NotAfter().Add(-time.Duration(ratio * float64(life))).Truncate(time.Minute).Add(time.Minute)
	for m := from; m.Before(s.cur.NotAfter().Add(-2 * time.Minute)); m = m.Add(time.Minute) {
		if md := s.modeAt(m); !md.failing() {
			s.t.Errorf("at %s: not ready, yet the CA was %s at %s, within the grace period of the certificate that expired at %s",
				s.sinceStart(), md, m.Sub(s.start), s.cur.NotAfter().Sub(s.start))
			return
		}
	}
}

// modeAt returns the CA's mode at t.
func (s *sim) modeAt(t time.Time) mode {
	m := s.segs[0].mode
	for _, sg := range s.segs {
		if sg.start.After(t) {
			break
		}
		m = sg.mode
	}
	return m
}

// checkSecret checks a served default: it parses, its key matches, its
// leaf is valid at now, carries the workload's SPIFFE ID and chains to
// the served roots. It returns the leaf.
func (s *sim) checkSecret(now time.Time, def, roots *tlsv3.Secret) (*x509.Certificate, error) {
	if def == nil || roots == nil {
		return nil, fmt.Errorf("default or ROOTCA missing")
	}
	tc := def.GetTlsCertificate()
	if c := s.checked; c != nil && bytes.Equal(c.chain, tc.GetCertificateChain().GetInlineBytes()) &&
		bytes.Equal(c.key, tc.GetPrivateKey().GetInlineBytes()) && bytes.Equal(c.roots, roots.GetValidationContext().GetTrustedCa().GetInlineBytes()) {
		// Checked already; only the time has moved.
		if now.Before(c.leaf.NotBefore) || !now.Before(c.leaf.NotAfter) {
			return nil, fmt.Errorf("leaf valid %s to %s, not at %s", c.leaf.NotBefore.Sub(s.start), c.leaf.NotAfter.Sub(s.start), now.Sub(s.start))
		}
		return c.leaf, nil
	}
	leaf, err := s.checkNew(now, tc, roots)
	if err == nil {
		s.checked = &checked{chain: tc.GetCertificateChain().GetInlineBytes(), key: tc.GetPrivateKey().GetInlineBytes(),
			roots: roots.GetValidationContext().GetTrustedCa().GetInlineBytes(), leaf: leaf}
	}
	return leaf, err
}

// checked is a served default that passed every check.
type checked struct {
	chain, key, roots []byte
	leaf              *x509.Certificate
}

// checkNew is checkSecret for a default not checked before.
func (s *sim) checkNew(now time.Time, tc *tlsv3.TlsCertificate, roots *tlsv3.Secret) (*x509.Certificate, error) {
	pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		return nil, fmt.Errorf("key and chain do not match: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, err
	}
	if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return nil, fmt.Errorf("leaf valid %s to %s, not at %s", leaf.NotBefore.Sub(s.start), leaf.NotAfter.Sub(s.start), now.Sub(s.start))
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != s.id.String() {
		return nil, fmt.Errorf("leaf identity %v, want %s", leaf.URIs, s.id)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(roots.GetValidationContext().GetTrustedCa().GetInlineBytes()) {
		return nil, fmt.Errorf("ROOTCA holds no certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("leaf does not chain to ROOTCA: %w", err)
	}
	return leaf, nil
}
