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
}

func (e *callError) Error() string   { return e.msg }
func (e *callError) Unwrap() []error { return e.errs }

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
// check. budget is the time the call had.
func (c *Client) callError(err error, cn *conn, budget time.Duration) error {
	code := status.Code(err)
	wrap := func(format string, args ...any) error {
		return &callError{
			msg:  fmt.Sprintf("create certificate: "+format, args...) + ": " + err.Error(),
			code: code,
			errs: []error{err},
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
