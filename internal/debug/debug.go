// Package debug serves the agent's HTTP endpoint: liveness, readiness and
// Prometheus metrics. It only reads state.
package debug

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Config configures a Server.
type Config struct {
	// Addr is the listen address, e.g. 127.0.0.1:15020.
	Addr string
	// Ready returns nil when the agent serves its secrets, else why not.
	Ready func() error
	// Gatherer provides /metrics; nil leaves /metrics out.
	Gatherer prometheus.Gatherer
	Logger   *zap.Logger
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
	return &Server{cfg: cfg, log: cfg.Logger.Named("debug")}, nil
}

// Handler returns the endpoint's routes.
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
	return mux
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
