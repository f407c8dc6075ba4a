package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/config"
	"github.com/sdsagent/sdsagent/internal/devca"
)

// caSubcommandsUsage follows the flags of `sdsagent ca --help`.
const caSubcommandsUsage = `
With Istio's plugged-in CA files in --dir (ca-cert.pem, ca-key.pem,
root-cert.pem, cert-chain.pem), the CA signs as that intermediate and
returns leaf, intermediates and root; otherwise it creates and uses a
self-signed root. These make an offline root and one intermediate per mesh:

  sdsagent ca init-root --dir ROOTDIR [flags]
      write ROOTDIR/root-cert.pem and ROOTDIR/root-key.pem
  sdsagent ca init-intermediate --root-dir ROOTDIR --dir MESHDIR --trust-domain TD [flags]
      write ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem into
      MESHDIR, for "sdsagent ca --dir MESHDIR"
  sdsagent ca revoke --dir DIR --serial HEX [--reason REASON]
      record a revocation and publish DIR/crl.pem at once (the CA may run)

Run "sdsagent ca init-root --help", "sdsagent ca init-intermediate --help"
or "sdsagent ca revoke --help" for their flags.
`

// runCA is `sdsagent ca`, and `sdsagent ca init-root|init-intermediate|revoke`.
func runCA(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "init-root":
			return runCAInitRoot(args[1:], getenv, stderr)
		case "init-intermediate":
			return runCAInitIntermediate(args[1:], getenv, stderr)
		case "revoke":
			return runCARevoke(args[1:], getenv, stderr)
		}
	}
	return command(args, getenv, stderr, parseCA, func(cfg config.CA, log *zap.Logger) error {
		return serveCA(ctx, cfg, log)
	})
}

// parseCA is config.ParseCA, with the subcommands listed after --help.
func parseCA(args []string, getenv func(string) string, stderr io.Writer) (config.CA, error) {
	cfg, err := config.ParseCA(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stderr, caSubcommandsUsage)
	}
	return cfg, err
}

// serveCA runs the development CA until ctx ends.
func serveCA(ctx context.Context, cfg config.CA, log *zap.Logger) error {
	ca, err := devca.New(devca.Config{
		Dir:         cfg.Dir,
		TrustDomain: cfg.TrustDomain,
		MaxTTL:      cfg.MaxTTL,
		ServerNames: cfg.ServerNames,
		CRLValidity: cfg.CRLValidity,
		Clock:       clock.Real(),
		Logger:      log,
		JWKSFile:    cfg.JWKSFile,
		JWTIssuer:   cfg.JWTIssuer,
		JWTAudience: cfg.JWTAudience,

		MaxPendingCSRs: cfg.MaxPendingCSRs,
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
		zap.String("mode", string(ca.Mode())),
		zap.String("trust_domain", cfg.TrustDomain),
		zap.String("root_cert", ca.RootCertPath()),
		zap.String("token_file", ca.TokenPath()),
		zap.Duration("max_ttl", cfg.MaxTTL),
		zap.String("crl", ca.CRLPath()),
	)
	return runAll(ctx, func(ctx context.Context) error { return ca.Serve(ctx, lis) }, ca.RunCRL)
}

// runCARevoke is `sdsagent ca revoke`.
func runCARevoke(args []string, getenv func(string) string, stderr io.Writer) error {
	return command(args, getenv, stderr, config.ParseCARevoke, func(cfg config.CARevoke, log *zap.Logger) error {
		_, err := devca.Revoke(devca.RevokeConfig{
			Dir:         cfg.Dir,
			Serial:      cfg.Serial,
			Reason:      cfg.Reason,
			CRLValidity: cfg.CRLValidity,
			Clock:       clock.Real(),
			Logger:      log,
		})
		return err
	})
}

// runCAInitRoot is `sdsagent ca init-root`.
func runCAInitRoot(args []string, getenv func(string) string, stderr io.Writer) error {
	return command(args, getenv, stderr, config.ParseCAInitRoot, func(cfg config.CAInitRoot, log *zap.Logger) error {
		return devca.InitRoot(devca.RootConfig{
			Dir:          cfg.Dir,
			CommonName:   cfg.CommonName,
			Organization: cfg.Organization,
			TTL:          cfg.TTL,
			KeyType:      cfg.KeyType,
			Clock:        clock.Real(),
			Logger:       log,
		})
	})
}

// runCAInitIntermediate is `sdsagent ca init-intermediate`.
func runCAInitIntermediate(args []string, getenv func(string) string, stderr io.Writer) error {
	return command(args, getenv, stderr, config.ParseCAInitIntermediate, func(cfg config.CAInitIntermediate, log *zap.Logger) error {
		return devca.InitIntermediate(devca.IntermediateConfig{
			RootDir:          cfg.RootDir,
			Dir:              cfg.Dir,
			TrustDomain:      cfg.TrustDomain,
			CommonName:       cfg.CommonName,
			TTL:              cfg.TTL,
			KeyType:          cfg.KeyType,
			NoNameConstraint: cfg.NoNameConstraint,
			Clock:            clock.Real(),
			Logger:           log,
		})
	})
}
