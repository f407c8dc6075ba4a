// Package caclient is the client for Istio's certificate service,
// istio.v1.auth.IstioCertificateService/CreateCertificate, as istiod and
// cert-manager's istio-csr serve it.
//
// A Client makes one CreateCertificate call per Sign. Retries, caching and
// verification of the returned chain belong to the caller.
package caclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/internal/caapi"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/ratelog"
)

// defaultTimeout bounds a call when Config.Timeout is zero: long enough for
// a CA signing with an RSA key under load, short enough that the caller's
// retry loop keeps moving when the CA does not answer.
const defaultTimeout = 10 * time.Second

// Metadata keys, as Istio's agent sends them.
const (
	authorizationKey = "authorization"
	clusterIDKey     = "ClusterID"
)

// Config configures a Client.
type Config struct {
	// Addr is the host:port of the CA, e.g. istiod.istio-system.svc:15012.
	Addr string
	// RootCertFile holds the PEM roots that verify the CA's TLS certificate.
	// It is read again for every new connection, so a root rotated on disk
	// is used without a restart. Required unless Plaintext.
	RootCertFile string
	// ServerName is the name verified in the CA's certificate, also sent as
	// SNI and :authority. Default: the host part of Addr.
	ServerName string
	// Plaintext turns TLS off entirely; RootCertFile and ServerName are then
	// ignored. The bearer token travels unencrypted.
	Plaintext bool
	// TokenFile holds the bearer token sent to the CA. It is read on every
	// call, so a rotated projected token is picked up. Empty means no
	// authorization header is sent.
	TokenFile string
	// ClusterID is sent as "ClusterID" metadata when non-empty (Istio's
	// ISTIO_META_CLUSTER_ID).
	ClusterID string
	// Timeout is the deadline of each call; a shorter context deadline
	// wins. Default 10s.
	Timeout time.Duration
	// Logger receives debug logs, one per call. Default: no logging.
	Logger *zap.Logger
}

// Client signs CSRs with an Istio CA. Its methods are safe for concurrent use.
//
// A Client keeps one gRPC connection to the CA and reuses it while it works.
// After a call fails because the CA could not be reached, the next call
// starts on a new connection instead of waiting out gRPC's reconnect
// backoff, so each Sign makes a real attempt and the caller's retry policy
// alone decides how often the CA is tried.
type Client struct {
	cfg Config
	log *zap.Logger

	// pushbackLog rate-limits the warnings about unusable pushbacks.
	pushbackLog *ratelog.Limiter

	mu     sync.Mutex
	closed bool
	cur    *conn
	// conns holds every connection not yet closed, cur included.
	conns map[*conn]struct{}
}

// New validates cfg and returns a Client. It does not connect: the first
// Sign does. A missing or unparsable RootCertFile is only logged here: the
// file is read on every new connection, so a root mounted late (or fixed
// on disk) is picked up without a restart, and Sign names the file until then.
func New(cfg Config) (*Client, error) {
	if cfg.Addr == "" {
		return nil, errors.New("caclient config: CA address is empty")
	}
	host, port, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("caclient config: CA address %q is not host:port: %w", cfg.Addr, err)
	}
	if port == "" {
		return nil, fmt.Errorf("caclient config: CA address %q has no port", cfg.Addr)
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("caclient config: negative timeout %s", cfg.Timeout)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = defaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	log := cfg.Logger.Named("caclient").With(zap.String("addr", cfg.Addr))
	if cfg.Plaintext {
		cfg.RootCertFile = ""
		cfg.ServerName = ""
		log.Warn("ca connection is not encrypted")
	} else {
		if cfg.RootCertFile == "" {
			return nil, errors.New("caclient config: a root certificate file is required to verify the CA (plaintext must be asked for explicitly)")
		}
		if cfg.ServerName == "" {
			cfg.ServerName = host
		}
		if cfg.ServerName == "" {
			return nil, fmt.Errorf("caclient config: CA address %q has no host to verify; set a server name", cfg.Addr)
		}
		if _, err := pki.ReadCARootFile(cfg.RootCertFile); err != nil {
			log.Warn("ca root certificate not usable yet; it is read again on every connection", zap.Error(err))
		}
	}
	c := &Client{cfg: cfg, log: log, conns: make(map[*conn]struct{}),
		pushbackLog: ratelog.NewLimiter(clock.Real(), 1, pushbackLogEvery)}
	cn, err := c.dial()
	if err != nil {
		return nil, err
	}
	c.cur = cn
	return c, nil
}

// Sign sends csrPEM to the CA, asking for a certificate valid for ttl
// (rounded down to whole seconds; zero lets the CA choose), and returns
// cert_chain as the CA sent it: leaf first, root last. It makes one call,
// bounded by Config.Timeout and ctx. The chain is not verified.
//
// Errors carry the gRPC code (see Code) and say what to check.
func (c *Client) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration) ([]string, error) {
	if len(bytes.TrimSpace(csrPEM)) == 0 {
		return nil, errors.New("create certificate: empty csr")
	}
	if ttl < 0 {
		return nil, fmt.Errorf("create certificate: negative ttl %s", ttl)
	}
	token, err := c.readToken()
	if err != nil {
		return nil, err
	}
	cn, err := c.acquire()
	if err != nil {
		return nil, err
	}

	budget := c.cfg.Timeout
	if dl, ok := ctx.Deadline(); ok {
		budget = max(min(budget, time.Until(dl)), 0)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var md []string
	if token != "" {
		md = append(md, authorizationKey, "Bearer "+token)
	}
	if c.cfg.ClusterID != "" {
		md = append(md, clusterIDKey, c.cfg.ClusterID)
	}
	if len(md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
	}
	req := &caapi.CertificateRequest{
		Csr:              string(csrPEM),
		ValidityDuration: int64(ttl.Seconds()),
	}

	start := time.Now()
	var trailer metadata.MD
	resp, err := caapi.CreateCertificate(ctx, cn.cc, req, grpc.Trailer(&trailer))
	elapsed := time.Since(start)
	if err != nil {
		err = redact(err, token)
		code := status.Code(err)
		pb := c.pushback(trailer)
		ol := callOverload{overloaded: overloaded(code, cn.cc.GetState() == connectivity.Ready, pb), pushback: pb}
		health := connOK
		if code == codes.Unavailable {
			health = connUnreachable
		}
		c.release(cn, health)
		c.log.Debug("create certificate failed",
			zap.Duration("ttl", ttl),
			zap.Duration("duration", elapsed),
			zap.Stringer("code", code),
			zap.Bool("overloaded", ol.overloaded),
			zap.Duration("pushback", pb),
			zap.Error(err))
		return nil, c.callError(err, cn, budget, ol)
	}
	c.release(cn, connOK)
	chain := resp.GetCertChain()
	if err := checkChain(chain); err != nil {
		c.log.Debug("create certificate failed",
			zap.Duration("ttl", ttl),
			zap.Duration("duration", elapsed),
			zap.Int("chain_length", len(chain)),
			zap.Error(err))
		return nil, err
	}
	c.log.Debug("create certificate succeeded",
		zap.Duration("ttl", ttl),
		zap.Duration("duration", elapsed),
		zap.Int("chain_length", len(chain)))
	return chain, nil
}

// checkChain refuses a chain that is empty or has an empty element; what
// the certificates say is for the caller to verify.
func checkChain(chain []string) error {
	if len(chain) == 0 {
		return errors.New("create certificate: CA returned an empty certificate chain")
	}
	for i, p := range chain {
		if strings.TrimSpace(p) == "" {
			return fmt.Errorf("create certificate: CA returned an empty certificate chain element (%d of %d)", i+1, len(chain))
		}
	}
	return nil
}

// Close closes the connections to the CA, cancelling calls in flight.
// Later calls to Sign fail. Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for cn := range c.conns {
		if err := c.closeConn(cn); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close ca client: %w", err)
	}
	return nil
}

// readToken returns the trimmed bearer token, or "" when no token file is
// configured. Its errors never contain the token.
func (c *Client) readToken() (string, error) {
	path := c.cfg.TokenFile
	if path == "" {
		return "", nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", fmt.Errorf("read token file %s: %w (check that the service account token is mounted there and readable)", path, err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("read token file %s: file is empty (check the token volume projection)", path)
	}
	for i := 0; i < len(token); i++ {
		if b := token[i]; b < 0x21 || b > 0x7e {
			return "", fmt.Errorf("read token file %s: token holds a byte not allowed in a header at offset %d (the file should hold one JWT)", path, i)
		}
	}
	return token, nil
}

// redact replaces the token in a gRPC status message, in case a CA echoes it.
func redact(err error, token string) error {
	if token == "" {
		return err
	}
	st, ok := status.FromError(err)
	if !ok || !strings.Contains(st.Message(), token) {
		return err
	}
	return status.Error(st.Code(), strings.ReplaceAll(st.Message(), token, "[redacted]"))
}
