package main

import (
	"io"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/config"
)

// parseFunc is a config.Parse* function.
type parseFunc[C config.Logged] func(args []string, getenv func(string) string, output io.Writer) (C, error)

// command is every logging subcommand's preamble: parse the arguments,
// build the logger the settings ask for, run body, flush the logger.
func command[C config.Logged](args []string, getenv func(string) string, stderr io.Writer, parse parseFunc[C], body func(C, *zap.Logger) error) error {
	cfg, err := parse(args, getenv, stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg.Logging(), stderr)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	return body(cfg, log)
}
