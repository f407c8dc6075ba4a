package caclient

import (
	"crypto/tls"
	"errors"
	"fmt"
	"sync/atomic"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sdsagent/sdsagent/internal/pki"
)

// conn is one gRPC channel to the CA.
type conn struct {
	cc *grpc.ClientConn
	// tlsErr is the outcome of the last verification of the CA's
	// certificate on this channel: nil after a success.
	tlsErr atomic.Pointer[error]

	// Guarded by Client.mu.
	refs    int  // calls using the channel
	failed  bool // a call failed to reach the CA: replace the channel
	retired bool // no longer handed out; closed when refs drops to 0
	closed  bool
}

// lastTLSError returns the error of the last failed verification of the
// CA's certificate, or nil.
func (cn *conn) lastTLSError() error {
	if p := cn.tlsErr.Load(); p != nil {
		return *p
	}
	return nil
}

// dial creates a channel without connecting it.
func (c *Client) dial() (*conn, error) {
	cn := &conn{}
	// With TLS, gRPC takes the :authority, and from it SNI, from the
	// ServerName of the credentials.
	cc, err := grpc.NewClient(c.cfg.Addr, grpc.WithTransportCredentials(c.transportCredentials(cn)), connectParams())
	if err != nil {
		return nil, fmt.Errorf("create ca connection to %s: %w", c.cfg.Addr, err)
	}
	cn.cc = cc
	c.conns[cn] = struct{}{}
	return cn, nil
}

func (c *Client) transportCredentials(cn *conn) credentials.TransportCredentials {
	if c.cfg.Plaintext {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: c.cfg.ServerName,
		// crypto/tls's own verification is off only because it would use
		// roots read once; VerifyConnection does the full chain and
		// hostname verification with roots read from disk at every
		// handshake, resumed sessions included.
		InsecureSkipVerify: true, //nolint:gosec // see VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			err := verifyServer(cs, c.cfg.RootCertFile, c.cfg.ServerName)
			cn.tlsErr.Store(&err)
			if err != nil {
				c.log.Debug("ca certificate not verified",
					zap.String("root_cert_file", c.cfg.RootCertFile),
					zap.String("server_name", c.cfg.ServerName),
					zap.Error(err))
			} else {
				// Marks the end of the TLS handshake in a start-up timeline.
				c.log.Debug("ca certificate verified", zap.String("server_name", c.cfg.ServerName))
			}
			return err
		},
	})
}

// verifyServer verifies the CA's certificate chain against the roots in
// rootFile, and that the leaf is valid for serverName.
func verifyServer(cs tls.ConnectionState, rootFile, serverName string) error {
	roots, err := pki.ReadCARootFile(rootFile)
	if err != nil {
		return err
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("verify CA certificate: CA sent no certificate")
	}
	if err := pki.VerifyServerChain(cs.PeerCertificates, roots, serverName); err != nil {
		return fmt.Errorf("verify CA certificate: %w", err)
	}
	return nil
}

// acquire returns the channel for a call, replacing the current one if a
// call on it failed to reach the CA. release must follow.
func (c *Client) acquire() (*conn, error) { return c.acquireConn(replaceFailing) }

// failingPolicy says what acquireConn does with a channel in
// TRANSIENT_FAILURE.
type failingPolicy bool

const (
	// keepFailing keeps it: a probe waits out its reconnect backoff.
	keepFailing failingPolicy = false
	// replaceFailing dials a new one: a call does not wait.
	replaceFailing failingPolicy = true
)

// connHealth is what a call learnt of its channel, for release.
type connHealth bool

const (
	// connOK leaves the channel in use.
	connOK connHealth = false
	// connUnreachable marks it for replacement: the call did not reach
	// the CA on it.
	connUnreachable connHealth = true
)

// acquireConn is acquire, treating a channel in TRANSIENT_FAILURE as
// failing says.
func (c *Client) acquireConn(failing failingPolicy) (*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("create certificate: ca client is closed")
	}
	if c.cur.failed || (failing == replaceFailing && c.cur.cc.GetState() == connectivity.TransientFailure) {
		cn, err := c.dial()
		if err != nil {
			return nil, err
		}
		old := c.cur
		c.cur = cn
		old.retired = true
		if old.refs == 0 {
			c.closeRetired(old)
		}
	}
	c.cur.refs++
	return c.cur, nil
}

// release ends a call on cn; connUnreachable marks cn for replacement.
func (c *Client) release(cn *conn, health connHealth) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cn.refs--
	if health == connUnreachable {
		cn.failed = true
	}
	if cn.retired && cn.refs == 0 {
		c.closeRetired(cn)
	}
}

// closeRetired closes a channel that is no longer used. Its error is only
// logged: no call depends on it.
func (c *Client) closeRetired(cn *conn) {
	if err := c.closeConn(cn); err != nil {
		c.log.Debug("close ca connection failed", zap.Error(err))
	}
}

// closeConn closes cn once. c.mu must be held.
func (c *Client) closeConn(cn *conn) error {
	if cn.closed {
		return nil
	}
	cn.closed = true
	delete(c.conns, cn)
	return cn.cc.Close()
}
