package main

import (
	"context"
	"io"
	"time"

	"github.com/sdsagent/sdsagent/internal/config"
	"github.com/sdsagent/sdsagent/internal/debug"
)

// runSecrets is `sdsagent secrets`: it prints the secrets the local agent
// serves, read from its /debug/secrets endpoint.
func runSecrets(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.ParseSecrets(args, getenv, stderr)
	if err != nil {
		return err
	}
	raw, err := debug.FetchSecrets(ctx, cfg.HTTPAddr)
	if err != nil {
		return err
	}
	if cfg.Output == "json" {
		_, err := stdout.Write(raw)
		return err
	}
	dump, err := debug.ParseSecrets(raw)
	if err != nil {
		return err
	}
	if cfg.Output == "pem" {
		pem, err := debug.SecretPEM(dump, cfg.Name)
		if err != nil {
			return err
		}
		_, err = stdout.Write(pem)
		return err
	}
	if cfg.Name != "" {
		if dump, err = debug.Select(dump, cfg.Name); err != nil {
			return err
		}
	}
	return debug.WriteTable(stdout, dump, time.Now())
}
