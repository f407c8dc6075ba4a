package sds

import (
	gcplog "github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/server/config"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// xdsLogger adapts zap to go-control-plane's printf-style logger. Every
// level goes to debug: go-control-plane logs at info for each watch it
// opens, far too often for an agent's info log.
type xdsLogger struct {
	l *zap.SugaredLogger
}

// newXDSLogger returns an adapter under "sds.xds", or a no-op logger when
// debug logs are off so that go-control-plane does not format messages
// nobody reads.
func newXDSLogger(l *zap.Logger) xdsLogger {
	if !l.Core().Enabled(zapcore.DebugLevel) {
		return xdsLogger{}
	}
	return xdsLogger{l: l.Named("xds").WithOptions(zap.AddCallerSkip(2)).Sugar()}
}

func (x xdsLogger) logf(format string, args []any) {
	if x.l != nil {
		x.l.Debugf(format, args...)
	}
}

// Debugf, Infof, Warnf and Errorf all log at debug level.
func (x xdsLogger) Debugf(format string, args ...any) { x.logf(format, args) }
func (x xdsLogger) Infof(format string, args ...any)  { x.logf(format, args) }
func (x xdsLogger) Warnf(format string, args ...any)  { x.logf(format, args) }
func (x xdsLogger) Errorf(format string, args ...any) { x.logf(format, args) }

var _ gcplog.Logger = xdsLogger{}

// withXDSLogger sets the logger of go-control-plane's stream servers.
func withXDSLogger(l xdsLogger) config.XDSOption {
	return func(o *config.Opts) { o.Logger = l }
}
