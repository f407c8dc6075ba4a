// Package sds serves the agent's secrets to Envoy over the Secret Discovery
// Service on a Unix domain socket: StreamSecrets (state of the world),
// DeltaSecrets and FetchSecrets.
//
// The protocol is implemented here, on go-control-plane's generated
// protos: one mutex serializes each stream's subscriptions, versions,
// nonces and sends (stream.go, push.go), secrets are marshalled once into
// a versioned table that every stream reads (table.go), and what clients
// may ask is bounded (limits.go), their log lines included.
//
// Its files: server.go (Config, New, Run and Serve, what operators see),
// listen.go (the socket: path limit, stale files, mode), transport.go (the
// per-connection gRPC settings and the handshake timeout), service.go (the
// three RPCs), push.go (a stream's handler loop, and the pushes of table
// updates), stream.go (one stream's state and responses), fetch.go
// (FetchSecrets), table.go (the versioned table of marshalled secrets),
// sync.go (the Source's snapshots into the table; Secret protos via
// ToProto), limits.go (Limits and their refusals), connlimit.go (the
// connection cap, enforced at accept) and codec.go (the message size
// limit's own refusal).
package sds

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/metrics"
	"github.com/sdsagent/sdsagent/internal/ratelog"
)

const (
	// DefaultSocketPath is where Istio's agent serves SDS, so Envoy
	// bootstraps written for Istio work unchanged.
	DefaultSocketPath = "/var/run/secrets/workload-spiffe-uds/socket"
	// DefaultSocketMode lets only the owner and group (Envoy shares the
	// pod's fsGroup) connect: whoever connects gets the private key.
	DefaultSocketMode os.FileMode = 0o660
)

// gracefulStopTimeout bounds how long Serve waits for connections to drain
// after its context ends. Streams end at once (their context is cancelled),
// so this only matters for a client that does not close its connection.
const gracefulStopTimeout = 3 * time.Second

// API labels used in StreamInfo.API and the metrics' "api" label.
const (
	apiSotW  = "sotw"
	apiDelta = "delta"
	apiFetch = "fetch"
)

// Source supplies what the server serves; cache.Manager implements it.
// Its methods are called concurrently, from the sync goroutine and from
// stream goroutines, and must be safe for that.
type Source interface {
	// Snapshot returns the current secrets. The server never modifies it.
	Snapshot() *cache.Snapshot
	// Subscribe returns a channel that receives a value after changes (and
	// once at once); notifications may coalesce. cancel stops them.
	Subscribe() (updates <-chan struct{}, cancel func())
	// CheckName returns nil if the name can be served (now or once it
	// exists); otherwise an error saying why not that lists valid names.
	CheckName(name string) error
}

// Demander is told which names the streams want, for a Source that loads
// some secrets only while a stream wants them (cache.Manager: file-cert:
// and file-root: names). Set it as Config.Demander.
// The server calls SetDemand with the sorted union of the names every
// open stream asks for, whenever that union changes: one call at a time,
// the last call carrying the current union, never while it holds the
// lock that guards its streams. SetDemand must not block.
type Demander interface {
	SetDemand(names []string)
}

// Config configures a Server. Zero fields get defaults.
type Config struct {
	// SocketPath is where Run listens. Default DefaultSocketPath.
	SocketPath string
	// SocketMode is the socket file's mode. Default DefaultSocketMode.
	SocketMode os.FileMode
	// Source supplies the secrets. Required.
	Source Source
	// Demander, if set, is told the union of the names the open streams
	// want (usually the same cache.Manager as Source). Nil: nobody is.
	Demander Demander
	// Logger receives the server's logs, under the name "sds". Default Nop.
	Logger *zap.Logger
	// Metrics receives the SDS metrics. Default metrics.New(nil).
	Metrics *metrics.Metrics
	// Clock tells the time: when the workload certificate has expired,
	// the windows of the log limits, and when a graceful stop gives up.
	// Default the real clock.
	Clock clock.Clock
	// Limits bound what clients may ask for; zero fields get defaults.
	Limits Limits

	// untune leaves transport settings at gRPC's defaults (tests only).
	untune untune
}

// StreamInfo describes one open SDS stream, for the debug endpoint.
type StreamInfo struct {
	// ID identifies the stream within this process; IDs are never reused.
	ID int64
	// API is "sotw" or "delta".
	API string
	// NodeID is the node.id the client sent in its first request.
	NodeID string
	// Names are the resource names the stream currently asks for.
	Names []string
	// UnknownNames are names requested on this stream, at any time, that
	// the agent cannot serve.
	UnknownNames []string
	// AckedVersion is the last version the client accepted.
	AckedVersion string
	// Nacks counts responses the client rejected.
	Nacks int
	// LastNack is the error message of the last rejection.
	LastNack string
	// OpenedAt is when the stream was opened.
	OpenedAt time.Time
}

// Server is the SDS gRPC service. Create it with New and run it with Run
// or Serve; only one Serve may run at a time. Streams is safe to call
// concurrently with everything else.
type Server struct {
	cfg   Config
	log   *zap.Logger
	table *table

	// warn and debug write the lines requests cause, within limits.
	warn, debug *ratelog.Logger

	streamGauge map[string]prometheus.Gauge
	pushes      map[string]prometheus.Counter

	serving atomic.Bool
	// conns counts the open client connections; accepted counts them
	// from accept to close, handshakes included (MaxConnections).
	conns, accepted atomic.Int64
	// pushers are the running push goroutines (stream.push); drainers
	// read refused connections (refuseConn), draining counts them.
	pushers, drainers sync.WaitGroup
	draining          atomic.Int32

	// seen is the last *cache.Secret processed per name, served or
	// rejected. Only the sync code of the running Serve touches it.
	seen map[string]*cache.Secret

	// demandMu orders SetDemand calls; demand is the last union sent.
	demandMu sync.Mutex
	demand   []string

	mu      sync.Mutex
	nextID  int64
	streams map[int64]*streamState
	// wanted counts the open streams that want each name; wantedChanged
	// says a name came or went since the last updateDemand.
	wanted        map[string]int
	wantedChanged bool
	// changed is closed and replaced whenever stream state changes.
	changed chan struct{}
}

// New returns a server for cfg. It starts no goroutines.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("new sds server: source is required")
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = DefaultSocketPath
	}
	if err := checkSocketPath(cfg.SocketPath); err != nil {
		return nil, fmt.Errorf("new sds server: %w", err)
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = DefaultSocketMode
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New(nil)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	limits, err := cfg.Limits.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("new sds server: %w", err)
	}
	cfg.Limits = limits
	logger := cfg.Logger.Named("sds")
	// The prefix makes versions unique per process and start, so a
	// version Envoy kept from an earlier agent is never mistaken for one
	// of ours.
	prefix := "sds-" + strconv.FormatInt(time.Now().Unix(), 36) + rand.Text()[:8] + "-"
	s := &Server{
		cfg:     cfg,
		log:     logger,
		table:   newTable(prefix),
		warn:    ratelog.NewLogger(logger, zapcore.WarnLevel, ratelog.NewLimiter(cfg.Clock, logBurst, logWindow)),
		debug:   ratelog.NewLogger(logger, zapcore.DebugLevel, ratelog.NewLimiter(cfg.Clock, logBurst, logWindow)),
		seen:    map[string]*cache.Secret{},
		streams: map[int64]*streamState{},
		wanted:  map[string]int{},
		changed: make(chan struct{}),
		streamGauge: map[string]prometheus.Gauge{
			apiSotW:  cfg.Metrics.SDSStreams.WithLabelValues(apiSotW),
			apiDelta: cfg.Metrics.SDSStreams.WithLabelValues(apiDelta),
		},
		pushes: map[string]prometheus.Counter{
			apiSotW:  cfg.Metrics.SDSPushes.WithLabelValues(apiSotW),
			apiDelta: cfg.Metrics.SDSPushes.WithLabelValues(apiDelta),
			apiFetch: cfg.Metrics.SDSPushes.WithLabelValues(apiFetch),
		},
	}
	return s, nil
}

// Run listens on the configured socket (see Listen) and serves until ctx
// is done. It removes the socket file on exit and returns nil after a
// clean stop.
func (s *Server) Run(ctx context.Context) error {
	lis, err := Listen(s.cfg.SocketPath, s.cfg.SocketMode)
	if err != nil {
		return err
	}
	err = s.Serve(ctx, lis)
	if rmErr := removeSocket(s.cfg.SocketPath); rmErr != nil {
		if err == nil {
			return rmErr
		}
		s.log.Warn("socket not removed", zap.String("path", s.cfg.SocketPath), zap.Error(rmErr))
	}
	return err
}

// Serve serves SDS on lis until ctx is done, then stops accepting, ends
// open streams and returns nil. It closes lis. It returns an error if
// serving fails or another Serve is running.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	if !s.serving.CompareAndSwap(false, true) {
		_ = lis.Close()
		return errors.New("sds serve: server is already serving")
	}
	defer s.serving.Store(false)

	updates, unsubscribe := s.cfg.Source.Subscribe()
	defer unsubscribe()
	// Apply what exists now, so the first requests are answered at once.
	s.syncSecrets()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	gs := grpc.NewServer(s.grpcOptions(ctx)...)
	gs.RegisterService(s.serviceDesc(), service{s: s, done: ctx.Done()})
	lis = s.limitHandshakes(ctx, lis)

	var wg sync.WaitGroup
	wg.Go(func() { s.syncLoop(ctx, updates) })
	serveErr := make(chan error, 1)
	wg.Go(func() { serveErr <- gs.Serve(lis) })

	s.log.Info("serving sds", zap.String("address", lis.Addr().String()))
	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		if errors.Is(err, grpc.ErrServerStopped) {
			err = nil
		}
		if err != nil {
			err = fmt.Errorf("sds serve: %w", err)
		}
	}
	// Cancelling ctx cancels every connection's context, which ends
	// every stream; then drain.
	cancel()
	s.stop(gs)
	wg.Wait()
	s.pushers.Wait()
	s.drainers.Wait()
	s.warn.Flush()
	s.debug.Flush()
	s.log.Info("sds stopped")
	return err
}

// stop stops gs gracefully, or forcibly after gracefulStopTimeout on the
// server's clock.
func (s *Server) stop(gs *grpc.Server) {
	done := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(done)
	}()
	timer := s.cfg.Clock.NewTimer(gracefulStopTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C():
		s.log.Warn("graceful stop timed out, closing connections", zap.Duration("timeout", gracefulStopTimeout))
		gs.Stop()
		<-done
	}
}

// Versions returns, for each secret being served, the version at which it
// last changed. A stream whose AckedVersion is at least that version (they
// are "<prefix><n>" with a growing n) has received it.
//
// Versions never lags what streams are sent: a secret enters the table
// with its version before any stream can read it, so once a stream has
// received a secret, Versions reports that version or a later one. A
// response's version is the highest version among the secrets sent on
// that stream, not the table's latest update, so a stream that asks only
// for default sees default's version even after ROOTCA changed.
func (s *Server) Versions() map[string]string { return s.table.versions() }

// Open returns the number of open client connections and SDS streams.
// It is cheap enough to poll.
func (s *Server) Open() (conns, streams int) {
	s.mu.Lock()
	streams = len(s.streams)
	s.mu.Unlock()
	return int(s.conns.Load()), streams
}

// Streams returns the open streams sorted by ID.
func (s *Server) Streams() []StreamInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streamsLocked()
}

func (s *Server) streamsLocked() []StreamInfo {
	out := make([]StreamInfo, 0, len(s.streams))
	for _, st := range s.streams {
		out = append(out, st.snapshot())
	}
	slices.SortFunc(out, func(a, b StreamInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// updateDemand tells the Demander the union of the names open
// streams want, if it changed since the last call. Holding demandMu while
// reading the streams and calling SetDemand makes the last state change
// the last one reported.
func (s *Server) updateDemand() {
	d := s.cfg.Demander
	if d == nil {
		return
	}
	s.demandMu.Lock()
	defer s.demandMu.Unlock()
	s.mu.Lock()
	if !s.wantedChanged {
		s.mu.Unlock()
		return
	}
	s.wantedChanged = false
	union := slices.Sorted(maps.Keys(s.wanted))
	s.mu.Unlock()
	if slices.Equal(union, s.demand) {
		return
	}
	s.demand = union
	d.SetDemand(slices.Clone(union))
}

// setNamesLocked replaces the names st wants and keeps the count of
// streams per name, so that the union is known without walking every
// stream on every request (an ACK from each of 1,000 streams after a
// rotation would otherwise cost a million steps). s.mu must be held.
func (s *Server) setNamesLocked(st *streamState, names []string) {
	// Count the new names first, so a name kept never drops to zero.
	for _, n := range names {
		if s.wanted[n]++; s.wanted[n] == 1 {
			s.wantedChanged = true
		}
	}
	for _, n := range st.names {
		if s.wanted[n]--; s.wanted[n] <= 0 {
			delete(s.wanted, n)
			s.wantedChanged = true
		}
	}
	st.names = names
}

// waitStreams blocks until cond holds for the open streams or ctx ends.
func (s *Server) waitStreams(ctx context.Context, cond func([]StreamInfo) bool) error {
	for {
		s.mu.Lock()
		infos := s.streamsLocked()
		changed := s.changed
		s.mu.Unlock()
		if cond(infos) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("wait for streams: %w", ctx.Err())
		}
	}
}

// notifyLocked wakes waitStreams. s.mu must be held.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}
