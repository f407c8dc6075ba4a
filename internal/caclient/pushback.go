package caclient

import (
	"strconv"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
)

// pushbackKey is the trailer in which a gRPC server asks the client to wait
// before its next attempt, in milliseconds (gRPC retry design A6).
const pushbackKey = "grpc-retry-pushback-ms"

// pushbackLogEvery bounds the log lines about unusable pushback values: a
// CA that sends garbage on every call must not flood the agent's log.
const pushbackLogEvery = time.Minute

// pushback returns the wait the CA asked for in trailer, or zero when it
// asked for none. A value that is not one non-negative integer counts as
// none, and is logged at most once per pushbackLogEvery.
func (c *Client) pushback(trailer metadata.MD) time.Duration {
	vals := trailer.Get(pushbackKey)
	if len(vals) == 0 {
		return 0
	}
	if len(vals) == 1 {
		if ms, err := strconv.ParseInt(vals[0], 10, 64); err == nil && ms >= 0 && ms <= int64(maxPushback/time.Millisecond) {
			return time.Duration(ms) * time.Millisecond
		}
	}
	if c.pushbackLog.Allow() {
		value := vals[0]
		if len(value) > 32 {
			value = value[:32] + "…"
		}
		c.log.Warn("ca sent an unusable retry pushback; ignoring it",
			zap.String("trailer", pushbackKey), zap.String("value", value), zap.Int("values", len(vals)))
	}
	return 0
}

// maxPushback is the largest pushback taken as such; a larger one is
// garbage (it would overflow a time.Duration long before this).
const maxPushback = 365 * 24 * time.Hour

// overloaded reports whether a call that failed with code was refused by
// a CA that is up but overloaded: it said so (ResourceExhausted), or it
// took the call on a connection that is up (ready) and gave no answer in
// time or answered Unavailable, or it asked for a pushback.
func overloaded(code codes.Code, ready bool, pushback time.Duration) bool {
	switch {
	case pushback > 0, code == codes.ResourceExhausted:
		return true
	case code == codes.DeadlineExceeded, code == codes.Unavailable:
		return ready
	}
	return false
}
