package main

import (
	"context"
	"fmt"
	"io"
	"net"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/config"
	"github.com/sdsagent/sdsagent/internal/devca"
)

// runCA is `sdsagent ca`.
func runCA(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := config.ParseCA(args, getenv, stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	ca, err := devca.New(devca.Config{
		Dir:         cfg.Dir,
		TrustDomain: cfg.TrustDomain,
		MaxTTL:      cfg.MaxTTL,
		ServerNames: cfg.ServerNames,
		Clock:       clock.Real(),
		Logger:      log,
	})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	log.Info("development CA listening",
		zap.String("addr", lis.Addr().String()),
		zap.String("trust_domain", cfg.TrustDomain),
		zap.String("root_cert", ca.RootCertPath()),
		zap.String("token_file", ca.TokenPath()),
		zap.Duration("max_ttl", cfg.MaxTTL),
	)
	return ca.Serve(ctx, lis)
}
