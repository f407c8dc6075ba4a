package config

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/sds"
)

func TestLimits(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	a, err := ParseAgent(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{SDS: sds.Limits{MaxNamesPerRequest: 100, MaxNameBytes: 4096, MaxStreamsPerConn: 512, MaxStreams: 4096,
		MaxMessageBytes: 1 << 20, HandshakeTimeout: 5 * time.Second, MaxConnections: 1024}, MaxWatchedFiles: 512}
	if a.Limits != want {
		t.Fatalf("default limits = %+v, want %+v", a.Limits, want)
	}
	a, err = ParseAgent([]string{"--sds-max-streams=10", "--sds-handshake-timeout=2s"},
		env(map[string]string{"SDSAGENT_SDS_MAX_STREAMS": "20", "SDSAGENT_MAX_WATCHED_FILES": "7", "SDSAGENT_SDS_MAX_CONNECTIONS": "30"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if a.Limits.SDS.MaxStreams != 10 || a.Limits.SDS.HandshakeTimeout != 2*time.Second || a.Limits.MaxWatchedFiles != 7 || a.Limits.SDS.MaxConnections != 30 {
		t.Fatalf("limits = %+v", a.Limits)
	}
	for _, args := range [][]string{
		{"--sds-max-names-per-request=0"},
		{"--sds-max-name-bytes=-1"},
		{"--sds-max-message-bytes=1MB"},
		{"--sds-handshake-timeout=0s"},
		{"--sds-max-connections=0"},
	} {
		_, err := ParseAgent(args, env(nil), io.Discard)
		flag := strings.SplitN(args[0], "=", 2)[0]
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("ParseAgent(%v) = %v, want an error naming %s", args, err, flag)
		}
	}
}
