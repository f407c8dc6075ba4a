package cfsslclient

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode"
)

// maxBody bounds what is read of an answer: a certificate and its envelope
// are a few kilobytes.
const maxBody = 1 << 20

// APIError is an answer of CFSSL with success false: its first error's
// code and message, the endpoint and the HTTP status.
type APIError struct {
	Endpoint   string // e.g. "authsign"
	HTTPStatus int
	// Code is CFSSL's error code: an HTTP status for request errors
	// (400), or category×1000+reason, e.g. 5400 unknown profile, 9xxx a
	// CSR CFSSL could not take.
	Code    int
	Message string
	// Hint says what to check; may be empty.
	Hint string
}

func (e *APIError) Error() string {
	s := fmt.Sprintf("cfssl %s: CFSSL refused the request (HTTP %d, error code %d: %q)", e.Endpoint, e.HTTPStatus, e.Code, e.Message)
	if e.Hint != "" {
		s += ": " + e.Hint
	}
	return s
}

// envelope is CFSSL's api.Response.
type envelope struct {
	Success *bool           `json:"success"`
	Result  json.RawMessage `json:"result"`
	Errors  []struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// infoResult is the result of /api/v1/cfssl/info.
type infoResult struct {
	Certificate string `json:"certificate"`
	Expiry      string `json:"expiry"`
}

// info asks for the signer's certificate and the profile's expiry.
func (c *Client) info(ctx context.Context) (*infoResult, error) {
	body, err := json.Marshal(struct {
		Label   string `json:"label"`
		Profile string `json:"profile"`
	}{c.cfg.Label, c.cfg.Profile})
	if err != nil {
		return nil, fmt.Errorf("cfssl info: %w", err)
	}
	raw, err := c.post(ctx, "info", body)
	if err != nil {
		return nil, err
	}
	var r infoResult
	if err := json.Unmarshal(raw, &r); err != nil || strings.TrimSpace(r.Certificate) == "" {
		return nil, fmt.Errorf("cfssl info: answer has no signer certificate (check --cfssl-label %q names a signer of the CFSSL server)", c.cfg.Label)
	}
	return &r, nil
}

// signRequest is the body of sign, and the request inside authsign.
type signRequest struct {
	CertificateRequest string `json:"certificate_request"`
	Profile            string `json:"profile,omitempty"`
	Label              string `json:"label,omitempty"`
}

// authenticatedRequest is CFSSL's auth.AuthenticatedRequest: byte slices
// travel as base64.
type authenticatedRequest struct {
	Token   []byte `json:"token"`
	Request []byte `json:"request"`
}

// sign sends the CSR to sign, or to authsign when key is set, and returns
// the certificate in PEM.
func (c *Client) sign(ctx context.Context, csrPEM, key []byte) (string, error) {
	req, err := json.Marshal(signRequest{CertificateRequest: string(csrPEM), Profile: c.cfg.Profile, Label: c.cfg.Label})
	if err != nil {
		return "", fmt.Errorf("cfssl sign: %w", err)
	}
	endpoint, body := "sign", req
	if key != nil {
		// CFSSL's standard authenticator: HMAC-SHA256 of the request bytes.
		mac := hmac.New(sha256.New, key)
		mac.Write(req)
		body, err = json.Marshal(authenticatedRequest{Token: mac.Sum(nil), Request: req})
		if err != nil {
			return "", fmt.Errorf("cfssl authsign: %w", err)
		}
		endpoint = "authsign"
	}
	raw, err := c.post(ctx, endpoint, body)
	if err != nil {
		return "", err
	}
	var r struct {
		Certificate string `json:"certificate"`
	}
	if err := json.Unmarshal(raw, &r); err != nil || strings.TrimSpace(r.Certificate) == "" {
		return "", fmt.Errorf("cfssl %s: answer has no certificate", endpoint)
	}
	return r.Certificate, nil
}

// post sends body to the endpoint and returns the result of a successful
// answer. Every other outcome is an error that says what to check.
func (c *Client) post(ctx context.Context, endpoint string, body []byte) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	budget := c.cfg.Timeout
	if dl, ok := ctx.Deadline(); ok {
		budget = max(time.Until(dl), 0)
	}
	u := c.base.JoinPath("api/v1/cfssl", endpoint).String()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("cfssl %s: %w", endpoint, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.transportError(endpoint, err, budget)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("cfssl %s: reading the answer of %s (HTTP %d): %w", endpoint, c.base, resp.StatusCode, err)
	}
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil || env.Success == nil {
		if resp.StatusCode != http.StatusOK {
			return nil, overloaded(fmt.Errorf("cfssl %s: %s answered HTTP %d with a body that is not CFSSL's JSON (check that --ca-addr is the CFSSL API base URL and its scheme): %s",
				endpoint, c.base, resp.StatusCode, excerpt(data)), resp, time.Now())
		}
		return nil, fmt.Errorf("cfssl %s: %s answered with a body that is not CFSSL's JSON (check that --ca-addr is the CFSSL API base URL): %s",
			endpoint, c.base, excerpt(data))
	}
	if !*env.Success || resp.StatusCode != http.StatusOK {
		e := &APIError{Endpoint: endpoint, HTTPStatus: resp.StatusCode}
		if len(env.Errors) > 0 {
			e.Code, e.Message = env.Errors[0].Code, env.Errors[0].Message
		}
		e.Hint = c.hint(e)
		return nil, overloaded(e, resp, time.Now())
	}
	return env.Result, nil
}

// hint says what to check for the CFSSL errors an agent can cause.
func (c *Client) hint(e *APIError) string {
	switch {
	case e.Message == "invalid token":
		return fmt.Sprintf("the HMAC key in %s is not the auth_key of profile %q", c.cfg.AuthKeyFile, c.cfg.Profile)
	case e.Message == "authentication required":
		return fmt.Sprintf("profile %q has an auth_key: set --cfssl-auth-key-file to its hex key", c.cfg.Profile)
	case e.Message == "no authentication provider":
		return fmt.Sprintf("profile %q has no auth_key (CFSSL also uses its default profile for a name it does not know): check --cfssl-profile, or drop --cfssl-auth-key-file", c.cfg.Profile)
	case e.Code == 5400:
		return fmt.Sprintf("CFSSL has no profile %q: check --cfssl-profile", c.cfg.Profile)
	case e.Code/1000 == 5:
		return fmt.Sprintf("CFSSL's signing policy refused the request: check profile %q in its config", c.cfg.Profile)
	case e.Code/1000 == 9:
		return "CFSSL could not take the CSR"
	case e.HTTPStatus == http.StatusNotFound:
		return "check that --ca-addr is the CFSSL API base URL"
	}
	return ""
}

// transportError explains a call that got no HTTP answer.
func (c *Client) transportError(endpoint string, err error, budget time.Duration) error {
	var tlsErr *serverVerifyError
	switch {
	case errors.As(err, &tlsErr):
		return fmt.Errorf("cfssl %s: TLS verification of CFSSL at %s failed (check that %s holds the root that issued CFSSL's certificate and that it is valid for %q): %w",
			endpoint, c.base, c.cfg.RootCertFile, c.cfg.ServerName, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("cfssl %s: CFSSL at %s unreachable or slow: no answer within %s: %w", endpoint, c.base, budget.Round(time.Millisecond), err)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("cfssl %s: call to CFSSL at %s canceled: %w", endpoint, c.base, err)
	case strings.Contains(err.Error(), "tls:") || strings.Contains(err.Error(), "x509:"):
		return fmt.Errorf("cfssl %s: TLS with CFSSL at %s failed (an http:// server needs an http:// --ca-addr): %w", endpoint, c.base, err)
	}
	return fmt.Errorf("cfssl %s: CFSSL at %s unreachable (check the address and that cfssl serve is running): %w", endpoint, c.base, err)
}

// excerpt is the start of a body, printable characters only, for an error.
func excerpt(data []byte) string {
	const n = 120
	s := strings.TrimSpace(string(data))
	if s == "" {
		return "(empty body)"
	}
	if len(s) > n {
		s = s[:n] + "..."
	}
	return fmt.Sprintf("%q", strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s))
}
