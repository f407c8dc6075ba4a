package cfsslclient

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// overloadError is an answer of HTTP 429 (Too Many Requests) or 503
// (Service Unavailable): CFSSL, or a proxy in front of it, took the call
// and refused it for load. It implements cache.OverloadError and
// cache.PushbackError, so that the agent backs off and honours the
// answer's Retry-After.
type overloadError struct {
	err        error
	status     int
	retryAfter time.Duration
}

func (e *overloadError) Error() string {
	s := fmt.Sprintf("%v (HTTP %d: the CA is overloaded", e.err, e.status)
	if e.retryAfter > 0 {
		return s + fmt.Sprintf("; it asks to retry in %s)", e.retryAfter)
	}
	return s + "; retrying with backoff)"
}

func (e *overloadError) Unwrap() error { return e.err }

// Overloaded implements cache.OverloadError.
func (e *overloadError) Overloaded() bool { return true }

// RetryAfter implements cache.PushbackError: the answer's Retry-After, or
// zero.
func (e *overloadError) RetryAfter() time.Duration { return e.retryAfter }

// overloaded marks err as an overload when resp says so.
func overloaded(err error, resp *http.Response, now time.Time) error {
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
		return err
	}
	return &overloadError{err: err, status: resp.StatusCode, retryAfter: retryAfter(resp.Header.Get("Retry-After"), now)}
}

// retryAfter reads a Retry-After header (RFC 9110: delay-seconds or an
// HTTP-date) as a wait from now; anything else, or a time past, is none.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 || secs > int64(maxRetryAfter/time.Second) {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if at, err := http.ParseTime(v); err == nil && at.After(now) {
		return min(at.Sub(now), maxRetryAfter)
	}
	return 0
}

// maxRetryAfter is the largest Retry-After taken as such; the agent caps
// what it honours much lower (cache.RetryOverloadMax).
const maxRetryAfter = 365 * 24 * time.Hour
