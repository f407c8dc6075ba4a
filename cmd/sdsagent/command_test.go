package main

import (
	"errors"
	"io"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/config"
)

// TestCommandPreamble checks the one preamble every logging subcommand
// runs: a parse error or a logger error stops before the body, and the
// body gets the parsed settings and a logger writing to stderr.
func TestCommandPreamble(t *testing.T) {
	parseWith := func(log config.Log, err error) parseFunc[config.CARevoke] {
		return func(args []string, _ func(string) string, _ io.Writer) (config.CARevoke, error) {
			return config.CARevoke{Dir: strings.Join(args, " "), Log: log}, err
		}
	}
	good := config.Log{Level: "info", Format: "json"}
	noBody := func(config.CARevoke, *zap.Logger) error { t.Error("body ran"); return nil }

	parseErr := errors.New("bad flag")
	if err := command(nil, nil, io.Discard, parseWith(good, parseErr), noBody); err != parseErr {
		t.Fatalf("parse error: command = %v, want %v", err, parseErr)
	}
	if err := command(nil, nil, io.Discard, parseWith(config.Log{Level: "loud", Format: "json"}, nil), noBody); err == nil {
		t.Fatal("bad log level: command = nil, want an error")
	}

	var stderr strings.Builder
	bodyErr := errors.New("body failed")
	err := command([]string{"d"}, nil, &stderr, parseWith(good, nil), func(cfg config.CARevoke, log *zap.Logger) error {
		if cfg.Dir != "d" {
			t.Errorf("body got %+v, want the parsed settings", cfg)
		}
		log.Info("body ran")
		return bodyErr
	})
	if err != bodyErr {
		t.Fatalf("command = %v, want the body's error", err)
	}
	if !strings.Contains(stderr.String(), `"msg":"body ran"`) {
		t.Fatalf("stderr = %q, want the body's JSON log line", stderr.String())
	}
}
