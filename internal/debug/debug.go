// Package debug serves the agent's HTTP endpoint: liveness, readiness,
// Prometheus metrics, and loopback-only views of the served secrets (in
// Envoy admin's shapes, private keys redacted), SDS streams and pprof. It
// only reads state. It also holds the client side of those views, which
// `sdsagent secrets` uses. It declares the small types it reads (Secret,
// PeerCheck, StreamInfo) so that it imports nothing above it.
//
// Its files: debug.go (the server and its routes), secrets.go (the
// secrets and SDS views), dump.go (Envoy admin's dump JSON without the
// admin protos) and client.go (fetching and printing those views).
package debug

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Secret is what the debug views read of one served secret. The package
// declares it so that it imports nothing above it (cmd/sdsagent fills it
// from cache.Secret).
type Secret struct {
	// Name is the SDS resource name.
	Name string
	// Cert is true for a TLS certificate with at least one certificate;
	// NotAfter is then its leaf's expiry.
	Cert     bool
	NotAfter time.Time
	// Workload marks the agent's own certificate, whose expiry the
	// readiness error explains.
	Workload bool
	// UpdatedAt is when the secret last changed; zero if unknown.
	UpdatedAt time.Time
	// PrivateKey is the key in PEM, empty for trust bundles. It is only
	// used to check that no response holds it.
	PrivateKey []byte
	// Proto builds the Envoy Secret that SDS serves for this secret
	// (sds.ToProto), with the private key replaced by key. It is only
	// ever called with the redaction marker.
	Proto func(key []byte) (*tlsv3.Secret, error)
}

// Secrets returns the served secrets in listing order (default, ROOTCA,
// then the rest sorted). It must be safe for concurrent use.
type Secrets func() []Secret

// PeerCheck is the SDS socket's uid/gid check and its refusals, as
// /debug/sds shows it. It has the JSON shape of peercred.Stats.
type PeerCheck struct {
	// AllowedUIDs are the user ids that may connect.
	AllowedUIDs []uint32 `json:"allowed_uids"`
	// AllowedGIDs are the group ids that may connect.
	AllowedGIDs []uint32 `json:"allowed_gids"`
	// Refused counts the connections closed since start.
	Refused uint64 `json:"refused"`
	// LastRefused is the last refused caller, nil before the first.
	LastRefused *PeerRefusal `json:"last_refused,omitempty"`
}

// PeerRefusal is one refused connection: the caller's credentials and
// when.
type PeerRefusal struct {
	// PID, UID and GID are the caller's process, user and group ids.
	PID int32  `json:"pid"`
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	// At is when it was refused.
	At time.Time `json:"at"`
	// Reason says why: not allowed, or credentials unreadable.
	Reason string `json:"reason"`
}

// StreamInfo describes one open SDS stream. It has the fields of
// sds.StreamInfo, so a value of that type converts with StreamInfo(v).
type StreamInfo struct {
	// ID identifies the stream within the process.
	ID int64 `json:"id"`
	// API is "sotw" or "delta".
	API string `json:"api"`
	// NodeID is the node.id the client sent.
	NodeID string `json:"node_id"`
	// Names are the resource names the stream asks for.
	Names []string `json:"names"`
	// UnknownNames are names asked for that the agent cannot serve.
	UnknownNames []string `json:"unknown_names"`
	// AckedVersion is the last version the client accepted.
	AckedVersion string `json:"acked_version"`
	// Nacks counts responses the client rejected.
	Nacks int `json:"nacks"`
	// LastNack is the error message of the last rejection.
	LastNack string `json:"last_nack"`
	// OpenedAt is when the stream was opened.
	OpenedAt time.Time `json:"opened_at"`
}

// Config configures a Server. Addr and Ready are required; a nil
// optional source leaves out the routes that need it.
type Config struct {
	// Addr is the listen address, e.g. 127.0.0.1:15020.
	Addr string
	// Ready returns nil when the agent serves its secrets, else why not.
	Ready func() error
	// Now tells the time that decides whether a certificate has expired
	// (the Manager's clock). Default time.Now.
	Now func() time.Time
	// Gatherer provides /metrics; nil leaves /metrics out.
	Gatherer prometheus.Gatherer
	// Secrets provides /debug/secrets and /debug/config_dump; nil leaves
	// them out. Each secret's Proto receives the redaction marker as key,
	// and its result is redacted again before it is written.
	Secrets Secrets
	// Versions returns, per resource name, the version last applied to the
	// SDS cache (sds.Server.Versions); nil leaves version_info empty.
	Versions func() map[string]string
	// NameErrors returns, per wanted resource name that cannot be served
	// now, why (the cache Manager's NameErrors); nil leaves it out.
	NameErrors func() map[string]string
	// Streams returns the open SDS streams (sds.Server.Streams); nil
	// leaves /debug/sds out.
	Streams func() []StreamInfo
	// PeerCheck returns the socket's uid/gid check and its refusals
	// (from peercred.Listener.Stats); nil when the check is off.
	PeerCheck func() PeerCheck
	// Logger receives the server's logs, under the name "debug".
	Logger *zap.Logger
}

// Server is the HTTP endpoint.
type Server struct {
	cfg Config
	log *zap.Logger
}

// New returns a Server; it listens only in Run.
func New(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		return nil, errors.New("debug: listen address is required")
	}
	if cfg.Ready == nil {
		return nil, errors.New("debug: readiness function is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Server{cfg: cfg, log: cfg.Logger.Named("debug")}, nil
}

// Handler returns the endpoint's routes. /healthz, /ready and /metrics
// answer anyone; everything under /debug/ answers only loopback callers.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.cfg.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if s.cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{}))
	}

	dbg := http.NewServeMux()
	if s.cfg.Secrets != nil {
		dbg.HandleFunc("GET /debug/secrets", s.serveSecrets)
		dbg.HandleFunc("GET /debug/config_dump", s.serveConfigDump)
	}
	if s.cfg.Streams != nil {
		dbg.HandleFunc("GET /debug/sds", s.serveSDS)
	}
	// net/http/pprof also registers on http.DefaultServeMux when imported;
	// nothing in the agent serves that mux.
	dbg.HandleFunc("/debug/pprof/", pprof.Index)
	dbg.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	dbg.HandleFunc("/debug/pprof/profile", pprof.Profile)
	dbg.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	dbg.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/debug/", s.loopbackOnly(dbg))
	return mux
}

// loopbackOnly lets next answer only requests whose peer address is a
// loopback address (127.0.0.0/8 or ::1), whatever address the server
// listens on. Forwarding headers are ignored on purpose.
func (s *Server) loopbackOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isLoopback(r.RemoteAddr) {
			s.log.Debug("debug request refused", zap.String("remote_addr", r.RemoteAddr), zap.String("path", r.URL.Path))
			http.Error(w, "forbidden: /debug/ answers only loopback callers (127.0.0.0/8, ::1)", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// isLoopback reports whether remoteAddr ("host:port", as in
// http.Request.RemoteAddr) is a loopback address. Anything unparsable is
// not.
func isLoopback(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	return ip.WithZone("").Unmap().IsLoopback()
}

// Run listens on Addr and serves until ctx ends; it returns nil then.
func (s *Server) Run(ctx context.Context) error {
	lis, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("debug: listen on %s: %w", s.cfg.Addr, err)
	}
	return s.Serve(ctx, lis)
}

// Serve serves on lis until ctx ends; it returns nil then.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	s.log.Info("http endpoint listening", zap.String("addr", lis.Addr().String()))
	select {
	case err := <-errc:
		return fmt.Errorf("debug: serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("debug: serve: %w", err)
	}
	return nil
}
