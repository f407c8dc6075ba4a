package caclient

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
)

// reconnectBackoff is how the connection to the CA is retried while it
// is down: never more than maxReconnectDelay×(1+jitter) ≈ 2s apart, so
// that a CA that comes back is seen within 2s (the agent's bound for an
// expired certificate), and jittered so that a fleet's attempts spread.
var reconnectBackoff = backoff.Config{
	BaseDelay:  time.Second,
	Multiplier: 1.6,
	Jitter:     0.2,
	MaxDelay:   maxReconnectDelay,
}

// maxReconnectDelay keeps reconnectBackoff's longest wait, jitter
// included, under 2s.
const maxReconnectDelay = 1650 * time.Millisecond

// connectParams are the dial options that shape reconnection.
func connectParams() grpc.DialOption {
	return grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnectBackoff, MinConnectTimeout: 10 * time.Second})
}

// Reachable reports whether the connection the next Sign would use is
// up, without blocking.
func (c *Client) Reachable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed && !c.cur.failed && c.cur.cc.GetState() == connectivity.Ready
}

// WaitReachable connects to the CA, TLS handshake included, and returns
// nil once the connection is up, or ctx's error. It sends no request and
// no token: while the CA is down it costs one connection attempt per
// reconnect backoff (1s growing to at most about 2s). The connection is
// the one the next Sign uses.
func (c *Client) WaitReachable(ctx context.Context) error {
	cn, err := c.acquireConn(keepFailing)
	if err != nil {
		return err
	}
	defer c.release(cn, connOK)
	for {
		s := cn.cc.GetState()
		switch s {
		case connectivity.Ready:
			return nil
		case connectivity.Idle:
			cn.cc.Connect()
		case connectivity.Shutdown:
			return fmt.Errorf("wait for ca %s: connection closed", c.cfg.Addr)
		}
		if !cn.cc.WaitForStateChange(ctx, s) {
			return fmt.Errorf("wait for ca %s: %w", c.cfg.Addr, ctx.Err())
		}
	}
}
