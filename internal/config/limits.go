package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/sds"
)

// Limits are the agent's bounds on what SDS clients may ask for.
type Limits struct {
	// SDS bounds the SDS server; it is handed to sds.Config as is.
	SDS sds.Limits
	// MaxWatchedFiles bounds the files file-* names may make the agent
	// watch (cache.Config.MaxWatchedFiles).
	MaxWatchedFiles int
}

// limitSettings are the agent's limit settings, at the end of its table.
func limitSettings() []Setting {
	return []Setting{
		{"sds-max-names-per-request", "SDSAGENT_SDS_MAX_NAMES_PER_REQUEST", strconv.Itoa(sds.DefaultMaxNamesPerRequest), "resource names one SDS request (and one delta stream) may ask for"},
		{"sds-max-name-bytes", "SDSAGENT_SDS_MAX_NAME_BYTES", strconv.Itoa(sds.DefaultMaxNameBytes), "longest resource name accepted"},
		{"sds-max-streams-per-connection", "SDSAGENT_SDS_MAX_STREAMS_PER_CONNECTION", strconv.Itoa(sds.DefaultMaxStreamsPerConn), "SDS streams one client connection may keep open"},
		{"sds-max-streams", "SDSAGENT_SDS_MAX_STREAMS", strconv.Itoa(sds.DefaultMaxStreams), "SDS streams open in total"},
		{"sds-max-message-bytes", "SDSAGENT_SDS_MAX_MESSAGE_BYTES", strconv.Itoa(sds.DefaultMaxMessageBytes), "largest SDS request message accepted, in bytes"},
		{"sds-handshake-timeout", "SDSAGENT_SDS_HANDSHAKE_TIMEOUT", durationDefault(sds.DefaultHandshakeTimeout), "a connection that has not sent its HTTP/2 preface by then is closed"},
		{"sds-max-connections", "SDSAGENT_SDS_MAX_CONNECTIONS", strconv.Itoa(sds.DefaultMaxConnections), "SDS client connections open at once; one more is refused as it is accepted"},
		{"max-watched-files", "SDSAGENT_MAX_WATCHED_FILES", strconv.Itoa(cache.DefaultMaxWatchedFiles), "distinct files file-cert: and file-root: names may make the agent watch"},
	}
}

// limits resolves the limit settings; each must be positive.
func (r *resolver) limits() Limits {
	l := Limits{
		SDS: sds.Limits{
			MaxNamesPerRequest: r.positiveInt("sds-max-names-per-request"),
			MaxNameBytes:       r.positiveInt("sds-max-name-bytes"),
			MaxStreamsPerConn:  r.positiveInt("sds-max-streams-per-connection"),
			MaxStreams:         r.positiveInt("sds-max-streams"),
			MaxMessageBytes:    r.positiveInt("sds-max-message-bytes"),
			HandshakeTimeout:   r.duration("sds-handshake-timeout"),
			MaxConnections:     r.positiveInt("sds-max-connections"),
		},
		MaxWatchedFiles: r.positiveInt("max-watched-files"),
	}
	if l.SDS.HandshakeTimeout <= 0 && r.err() == nil {
		_, from := r.source("sds-handshake-timeout")
		r.fail(fmt.Errorf("%s: must be positive, got %s", from, l.SDS.HandshakeTimeout))
	}
	return l
}

func (r *resolver) positiveInt(name string) int {
	v, from := r.source(name)
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n <= 0 {
		r.fail(fmt.Errorf("%s: %q is not a positive whole number", from, v))
	}
	return n
}

func (r *resolver) nonNegativeInt(name string) int {
	v, from := r.source(name)
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		r.fail(fmt.Errorf("%s: %q is not a whole number >= 0", from, v))
	}
	return n
}

// durationDefault writes a default duration as a user would type it:
// "24h", "5s", not "24h0m0s".
func durationDefault(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// floatDefault writes a default ratio in its shortest form ("0.5").
func floatDefault(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
