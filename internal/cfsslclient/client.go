// Package cfsslclient signs CSRs with a CFSSL API server (`cfssl serve`),
// the second CA the agent can use besides Istio's certificate service.
//
// A Sign asks /api/v1/cfssl/info for the signer's certificate, sends the CSR
// to /api/v1/cfssl/sign (or /api/v1/cfssl/authsign with an HMAC key), and
// returns the chain leaf first, root last: the signer's certificate and the
// certificates above it come from the root file the agent trusts, never
// from CFSSL alone. Retries, caching and verification of the chain belong
// to the caller, as with the Istio client.
package cfsslclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/pki"
)

// defaultTimeout bounds a call when Config.Timeout is zero, as for the
// Istio client.
const defaultTimeout = 10 * time.Second

// Config configures a Client.
type Config struct {
	// URL is the base URL of the CFSSL API, e.g. https://cfssl.pki.svc:8888
	// or http://127.0.0.1:8888. The scheme decides TLS.
	URL string
	// RootCertFile holds the PEM roots of the workload certificates: the
	// chain CFSSL's signer is completed up to one of them. With https it
	// also verifies CFSSL's TLS certificate. It is read on every call and
	// every new connection. Required.
	RootCertFile string
	// ServerName is the name verified in CFSSL's certificate, also sent as
	// SNI. Default: the host of URL.
	ServerName string
	// AuthKeyFile, when set, holds the hex HMAC key of the profile's
	// auth_key; requests then go to authsign. It is read on every call.
	AuthKeyFile string
	// Profile and Label are passed to CFSSL as they are; empty selects
	// CFSSL's default profile and signer.
	Profile string
	Label   string
	// Timeout is the deadline of each HTTP call; a shorter context deadline
	// wins. Default 10s.
	Timeout time.Duration
	// Logger receives debug logs, one per call. Default: no logging.
	Logger *zap.Logger
}

// Client signs CSRs with CFSSL. Its methods are safe for concurrent use.
type Client struct {
	cfg  Config
	base *url.URL
	http *http.Client
	log  *zap.Logger
	// ttlWarned is set once the profile's lifetime was reported to differ
	// from the one asked for, so the warning is not repeated each renewal.
	ttlWarned atomic.Bool
}

// New validates cfg and returns a Client. It does not connect: the first
// Sign does. A root file that is missing now is only logged, as it is read
// again on every call.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(strings.TrimSpace(cfg.URL))
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("cfssl config: address %q is not a CFSSL API base URL such as https://cfssl.pki.svc:8888 or http://127.0.0.1:8888", cfg.URL)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("cfssl config: address %q must be a plain base URL (no user, query or fragment)", cfg.URL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	if cfg.RootCertFile == "" {
		return nil, errors.New("cfssl config: a root certificate file is required: the roots of the workload certificates come from it")
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("cfssl config: negative timeout %s", cfg.Timeout)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = defaultTimeout
	}
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	c := &Client{cfg: cfg, base: u, log: cfg.Logger.Named("cfssl").With(zap.String("url", u.String()))}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	if u.Scheme == "https" {
		tr.TLSClientConfig = c.tlsConfig()
	} else {
		c.log.Warn("ca connection is not encrypted")
	}
	c.http = &http.Client{
		Transport: tr,
		// A CA that redirects is misconfigured; following could send the
		// CSR and the HMAC token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if _, err := pki.ReadCARootFile(cfg.RootCertFile); err != nil {
		c.log.Warn("ca root certificate not usable yet; it is read again on every call", zap.Error(err))
	}
	return c, nil
}

// tlsConfig verifies CFSSL's certificate with the roots read from disk at
// every handshake, so a rotated root file is used without a restart.
func (c *Client) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: c.cfg.ServerName,
		// crypto/tls's own verification is off only because it would use
		// roots read once; VerifyConnection does the full chain and
		// hostname verification, resumed sessions included.
		InsecureSkipVerify: true, //nolint:gosec // see VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyServer(cs, c.cfg.RootCertFile, c.cfg.ServerName)
		},
	}
}

// Sign sends csrPEM to CFSSL and returns the chain, leaf first and root
// last. The lifetime is the CFSSL profile's (its expiry, backdate
// included): CFSSL's sign API takes none per request, so ttl is only
// compared with it and a difference logged once. The chain is not verified.
func (c *Client) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration) ([]string, error) {
	if len(bytes.TrimSpace(csrPEM)) == 0 {
		return nil, errors.New("cfssl sign: empty csr")
	}
	if ttl < 0 {
		return nil, fmt.Errorf("cfssl sign: negative ttl %s", ttl)
	}
	key, err := c.readAuthKey()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	inf, err := c.info(ctx)
	if err != nil {
		c.log.Debug("cfssl sign failed", zap.Duration("duration", time.Since(start)), zap.Error(err))
		return nil, err
	}
	leaf, err := c.sign(ctx, csrPEM, key)
	if err != nil {
		c.log.Debug("cfssl sign failed", zap.Duration("duration", time.Since(start)), zap.Error(err))
		return nil, err
	}
	chain, err := c.completeChain(leaf, inf.Certificate)
	if err != nil {
		c.log.Debug("cfssl sign failed", zap.Duration("duration", time.Since(start)), zap.Error(err))
		return nil, err
	}
	c.checkLifetime(inf.Expiry, ttl)
	c.log.Debug("cfssl sign succeeded",
		zap.Bool("authenticated", key != nil),
		zap.Duration("duration", time.Since(start)),
		zap.Int("chain_length", len(chain)))
	return chain, nil
}

// checkLifetime warns once when the profile's expiry is not the lifetime
// the agent asked for.
func (c *Client) checkLifetime(expiry string, ttl time.Duration) {
	if ttl == 0 || expiry == "" {
		return
	}
	d, err := time.ParseDuration(expiry)
	if err != nil || d == ttl {
		return
	}
	if c.ttlWarned.CompareAndSwap(false, true) {
		c.log.Warn("cfssl profile sets the certificate lifetime",
			zap.String("profile", c.cfg.Profile),
			zap.Duration("profile_expiry", d),
			zap.Duration("requested_ttl", ttl))
	}
}

// Close releases idle connections. Sign may still be called.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

// readAuthKey returns the HMAC key, or nil when no key file is configured.
// Its errors never contain the key.
func (c *Client) readAuthKey() ([]byte, error) {
	path := c.cfg.AuthKeyFile
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("read cfssl auth key file %s: %w (check that the key is mounted there and readable)", path, err)
	}
	s := strings.TrimSpace(string(data))
	if s == "" {
		return nil, fmt.Errorf("read cfssl auth key file %s: file is empty (it should hold the profile's auth_key in hex)", path)
	}
	key, err := hex.DecodeString(s)
	if err != nil {
		// hex's error quotes the offending byte: do not pass it on.
		return nil, fmt.Errorf("read cfssl auth key file %s: not a hex key (it should hold the profile's auth_key in hex, as in CFSSL's config)", path)
	}
	return key, nil
}
