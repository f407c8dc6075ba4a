package caclient

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// callError is a failed CreateCertificate call. It wraps the gRPC status
// error (and the TLS verification error, if that was the cause), and matches
// context.DeadlineExceeded and context.Canceled for those codes.
type callError struct {
	msg  string
	code codes.Code
	errs []error
	// overload says whether the CA refused for load, and what pushback
	// it asked for (see cache.ClassifyFailure).
	overload callOverload
}

// callOverload is what a failed call says about the CA's load.
type callOverload struct {
	overloaded bool
	pushback   time.Duration
}

func (e *callError) Error() string   { return e.msg }
func (e *callError) Unwrap() []error { return e.errs }

// Overloaded reports whether the CA took the call and refused it for
// load: ResourceExhausted, a pushback, or DeadlineExceeded or Unavailable
// while the connection was up. False when the CA could not be reached.
// It implements cache.OverloadError.
func (e *callError) Overloaded() bool { return e.overload.overloaded }

// RetryAfter returns the wait the CA asked for in its
// grpc-retry-pushback-ms trailer, or zero. It implements
// cache.PushbackError.
func (e *callError) RetryAfter() time.Duration { return e.overload.pushback }

// Is makes errors.Is(err, context.DeadlineExceeded) and
// errors.Is(err, context.Canceled) hold for the matching codes, as they
// would for a plain context error.
func (e *callError) Is(target error) bool {
	switch target {
	case context.DeadlineExceeded:
		return e.code == codes.DeadlineExceeded
	case context.Canceled:
		return e.code == codes.Canceled
	}
	return false
}

// callError turns a gRPC error from a call on cn into one that says what to
// check. budget is the time the call had; ol what the call said about the
// CA's load.
func (c *Client) callError(err error, cn *conn, budget time.Duration, ol callOverload) error {
	code := status.Code(err)
	wrap := func(format string, args ...any) error {
		return &callError{
			msg:      fmt.Sprintf("create certificate: "+format, args...) + ": " + err.Error(),
			code:     code,
			errs:     []error{err},
			overload: ol,
		}
	}
	if code == codes.Unavailable || code == codes.DeadlineExceeded {
		if tlsErr := cn.lastTLSError(); tlsErr != nil {
			return &callError{
				msg: fmt.Sprintf("create certificate: TLS verification of CA at %s failed (check that %s holds the root that issued the CA's certificate and that the certificate is valid for %q): %v",
					c.cfg.Addr, c.cfg.RootCertFile, c.cfg.ServerName, tlsErr),
				code: code,
				errs: []error{err, tlsErr},
			}
		}
	}
	switch {
	case ol.pushback > 0:
		return wrap("CA at %s is overloaded and asks to retry in %s", c.cfg.Addr, ol.pushback)
	case code == codes.ResourceExhausted:
		return wrap("CA at %s is overloaded (retrying with backoff)", c.cfg.Addr)
	case ol.overloaded && code == codes.DeadlineExceeded:
		return wrap("CA at %s unreachable or slow: no answer within %s; it took the call on a connection that is up, so it is taken as overloaded (retrying with backoff)", c.cfg.Addr, budget.Round(time.Millisecond))
	}
	switch code {
	case codes.Unauthenticated:
		if c.cfg.TokenFile == "" {
			return wrap("CA at %s requires a token but no token file is configured", c.cfg.Addr)
		}
		return wrap("CA rejected the token from %s (check its audience and expiry)", c.cfg.TokenFile)
	case codes.PermissionDenied:
		return wrap("CA refused to sign (check that the token's identity may have the identity in the CSR)")
	case codes.InvalidArgument:
		return wrap("CA refused the request")
	case codes.Unavailable:
		return wrap("CA at %s unreachable (check the address and that the CA is running)", c.cfg.Addr)
	case codes.DeadlineExceeded:
		return wrap("CA at %s unreachable or slow: no answer within %s", c.cfg.Addr, budget.Round(time.Millisecond))
	case codes.Canceled:
		return wrap("call to CA at %s canceled", c.cfg.Addr)
	default:
		return wrap("CA at %s failed", c.cfg.Addr)
	}
}
