package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Limits are the agent's bounds on what SDS clients may ask for (see
// sds.Limits and cache.Config.MaxWatchedFiles).
type Limits struct {
	MaxNamesPerRequest int
	MaxNameBytes       int
	MaxStreamsPerConn  int
	MaxStreams         int
	MaxMessageBytes    int
	HandshakeTimeout   time.Duration
	MaxWatchedFiles    int
}

// limitSettings are the agent's limit settings, at the end of its table.
func limitSettings() []Setting {
	return []Setting{
		{"sds-max-names-per-request", "SDSAGENT_SDS_MAX_NAMES_PER_REQUEST", "100", "resource names one SDS request (and one delta stream) may ask for"},
		{"sds-max-name-bytes", "SDSAGENT_SDS_MAX_NAME_BYTES", "4096", "longest resource name accepted"},
		{"sds-max-streams-per-connection", "SDSAGENT_SDS_MAX_STREAMS_PER_CONNECTION", "512", "SDS streams one client connection may keep open"},
		{"sds-max-streams", "SDSAGENT_SDS_MAX_STREAMS", "4096", "SDS streams open in total"},
		{"sds-max-message-bytes", "SDSAGENT_SDS_MAX_MESSAGE_BYTES", "1048576", "largest SDS request message accepted, in bytes"},
		{"sds-handshake-timeout", "SDSAGENT_SDS_HANDSHAKE_TIMEOUT", "5s", "a connection that has not sent its HTTP/2 preface by then is closed"},
		{"max-watched-files", "SDSAGENT_MAX_WATCHED_FILES", "512", "distinct files file-cert: and file-root: names may make the agent watch"},
	}
}

// limits resolves the limit settings; each must be positive.
func (r *resolver) limits() Limits {
	l := Limits{
		MaxNamesPerRequest: r.positiveInt("sds-max-names-per-request"),
		MaxNameBytes:       r.positiveInt("sds-max-name-bytes"),
		MaxStreamsPerConn:  r.positiveInt("sds-max-streams-per-connection"),
		MaxStreams:         r.positiveInt("sds-max-streams"),
		MaxMessageBytes:    r.positiveInt("sds-max-message-bytes"),
		HandshakeTimeout:   r.duration("sds-handshake-timeout"),
		MaxWatchedFiles:    r.positiveInt("max-watched-files"),
	}
	if l.HandshakeTimeout <= 0 && r.err() == nil {
		_, from := r.source("sds-handshake-timeout")
		r.fail(fmt.Errorf("%s: must be positive, got %s", from, l.HandshakeTimeout))
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
