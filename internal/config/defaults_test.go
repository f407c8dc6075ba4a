package config

import (
	"bytes"
	"testing"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/sds"
)

// TestAgentDefaultsAreTheOwningPackages checks that `sdsagent run`
// without flags resolves to the defaults sds and cache declare, so the
// two can never drift apart.
func TestAgentDefaultsAreTheOwningPackages(t *testing.T) {
	a, err := ParseAgent(nil, env(), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{
		SDS: sds.Limits{
			MaxNamesPerRequest: sds.DefaultMaxNamesPerRequest,
			MaxNameBytes:       sds.DefaultMaxNameBytes,
			MaxStreamsPerConn:  sds.DefaultMaxStreamsPerConn,
			MaxStreams:         sds.DefaultMaxStreams,
			MaxMessageBytes:    sds.DefaultMaxMessageBytes,
			HandshakeTimeout:   sds.DefaultHandshakeTimeout,
			MaxConnections:     sds.DefaultMaxConnections,
		},
		MaxWatchedFiles: cache.DefaultMaxWatchedFiles,
	}
	if a.Socket != sds.DefaultSocketPath || a.SocketMode != sds.DefaultSocketMode ||
		a.SecretTTL != cache.DefaultTTL || a.GraceRatio != cache.DefaultGraceRatio || a.GraceJitter != cache.DefaultGraceJitter ||
		a.Limits != want {
		t.Errorf("defaults: socket %q %#o ttl %s grace %v/%v limits %+v; want %q %#o %s %v/%v %+v",
			a.Socket, a.SocketMode, a.SecretTTL, a.GraceRatio, a.GraceJitter, a.Limits,
			sds.DefaultSocketPath, sds.DefaultSocketMode, cache.DefaultTTL, cache.DefaultGraceRatio, cache.DefaultGraceJitter, want)
	}
	for d, s := range map[string]string{durationDefault(cache.DefaultTTL): "24h", durationDefault(sds.DefaultHandshakeTimeout): "5s"} {
		if d != s {
			t.Errorf("durationDefault = %q, want %q", d, s)
		}
	}
}
