package main

import (
	"context"
	"io"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/config"
	"github.com/sdsagent/sdsagent/internal/debug"
	"github.com/sdsagent/sdsagent/internal/memtrim"
	"github.com/sdsagent/sdsagent/internal/metrics"
	"github.com/sdsagent/sdsagent/internal/peercred"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/sds"
)

// runAgent is `sdsagent run`.
func runAgent(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	return command(args, getenv, stderr, config.ParseAgent, func(cfg config.Agent, log *zap.Logger) error {
		return serveAgent(ctx, cfg, log)
	})
}

// serveAgent builds the agent's components from cfg and runs them until
// ctx ends or one fails.
func serveAgent(ctx context.Context, cfg config.Agent, log *zap.Logger) error {
	// The first line a start-up timeline can date (hack/coldphases).
	log.Debug("configuration read")
	id, err := pki.WorkloadID(cfg.TrustDomain, cfg.Namespace, cfg.ServiceAccount)
	if err != nil {
		return err
	}
	plan := cfg.CertPlan(cache.MountedCertsPresent)
	client, err := newSigner(cfg, plan.Signer, log)
	if err != nil {
		return err
	}
	if client != nil {
		defer client.Close()
		// The first CSR waits for the connection to the CA, TLS included:
		// open it now, while the rest is set up and the key generated.
		if c, ok := client.(interface{ Connect() }); ok {
			c.Connect()
		}
	}
	clk := clock.Real()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	mgr, err := cache.New(cache.Config{
		ID:          id,
		KeyType:     cfg.KeyType,
		TTL:         cfg.SecretTTL,
		GraceRatio:  cfg.GraceRatio,
		GraceJitter: cfg.GraceJitter,
		Signer:      client, // nil with mounted files
		Clock:       clk,
		Logger:      log,
		Metrics:     m,
		// Files: the mounted workload certificate, file-cert: and file-root:.
		MountedCertDir: plan.MountedCertDir,
		FileResync:     cfg.FileResync,
		// Trust: the CA's root file (a change renews at once), extra
		// anchors, the overlap of a replaced root, SPIFFE bundles.
		CARootCertFile:   plan.CARootFile,
		TrustAnchorsFile: cfg.TrustAnchors,
		RootOverlap:      cfg.RootOverlap,
		SPIFFEValidator:  cfg.SPIFFEValidator,
		TrustBundleFiles: trustBundleFiles(cfg.TrustBundles),
		CRLFile:          cfg.CRLFile,
		MaxWatchedFiles:  cfg.Limits.MaxWatchedFiles,
	})
	if err != nil {
		return err
	}
	srv, err := sds.New(sds.Config{
		SocketPath: cfg.Socket,
		SocketMode: cfg.SocketMode,
		Source:     mgr,
		Demander:   mgr,
		Logger:     log,
		Metrics:    m,
		Limits:     cfg.Limits.SDS,
	})
	if err != nil {
		return err
	}
	// Memory that thousands of closed connections leave behind goes back
	// to the OS once the load has fallen, not minutes later; with
	// --release-startup-memory, so do the binary's pages they touched.
	heapCfg := memtrim.HeapConfig{Load: sdsLoad(srv), Clock: clk, Logger: log}
	if cfg.ReleaseMemory {
		heapCfg.ReleasePages = memtrim.Release
	}
	heap, err := memtrim.NewHeapReleaser(heapCfg)
	if err != nil {
		return err
	}
	tasks := []func(context.Context) error{mgr.Run, srv.Run, heap.Run}
	var peerCheck func() peercred.Stats
	if cfg.CheckPeers() {
		g := &guardedSDS{srv: srv, path: cfg.Socket, mode: cfg.SocketMode, cfg: peercred.Config{
			UIDs: cfg.AllowedUIDs, GIDs: cfg.AllowedGIDs, Clock: clk, Logger: log, Refused: m.SDSConnectionsRefused,
		}}
		tasks[1], peerCheck = g.Run, g.Stats
	}
	if cfg.OutputDir != "" {
		out, err := cache.NewOutputWriter(cache.OutputConfig{Dir: cfg.OutputDir, Source: mgr, Logger: log})
		if err != nil {
			return err
		}
		tasks = append(tasks, out.Run)
	}
	if cfg.HTTPAddr != "" {
		dbg, err := debug.New(debug.Config{
			Addr:       cfg.HTTPAddr,
			Ready:      mgr.Ready,
			Gatherer:   reg,
			Logger:     log,
			Secrets:    debugSecrets(mgr, sds.ToProto),
			Versions:   srv.Versions,
			NameErrors: mgr.NameErrors,
			PeerCheck:  debugPeerCheck(peerCheck),
			Streams:    debugStreams(srv),
		})
		if err != nil {
			return err
		}
		tasks = append(tasks, dbg.Run)
	}
	if cfg.ReleaseMemory {
		startup, err := memtrim.NewStartupReleaser(memtrim.StartupConfig{
			Served: firstCertificate(mgr), Clock: clk, Logger: log,
		})
		if err != nil {
			return err
		}
		tasks = append(tasks, startup.Run)
	}

	log.Info("starting agent",
		zap.String("version", versionString()),
		zap.String("spiffe_id", id.String()),
		zap.String("ca_provider", string(cfg.CAProvider)),
		zap.String("ca_addr", cfg.CAAddr),
		zap.String("socket", cfg.Socket),
		zap.String("http_addr", cfg.HTTPAddr),
		zap.String("key_type", string(cfg.KeyType)),
		zap.Duration("secret_ttl", cfg.SecretTTL),
		zap.String("trust_anchors", cfg.TrustAnchors),
		zap.Bool("spiffe_validator", cfg.SPIFFEValidator),
		zap.Int("trust_bundles", len(cfg.TrustBundles)),
		zap.Uint32s("allowed_uids", cfg.AllowedUIDs),
		zap.Uint32s("allowed_gids", cfg.AllowedGIDs),
		zap.String("crl_file", cfg.CRLFile),
	)
	log.Info("workload certificate source", zap.String("source", string(plan.Source)),
		zap.String("cert_dir", cfg.CertDir), zap.String("file_mounted_certs", string(cfg.MountedCerts)))
	err = runAll(ctx, tasks...)
	if err != nil {
		log.Error("agent stopped", zap.Error(err))
		return err
	}
	log.Info("agent stopped")
	return nil
}
