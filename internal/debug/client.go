package debug

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/sdsagent/sdsagent/internal/pki"
)

// FetchTimeout bounds FetchSecrets. The agent answers from memory, so a
// healthy agent answers in milliseconds.
const FetchTimeout = 5 * time.Second

// maxBody bounds what FetchSecrets reads; a dump of a few secrets is a
// few kilobytes.
const maxBody = 16 << 20

// UnreachableError says the agent's HTTP endpoint did not answer.
type UnreachableError struct {
	// Addr is the address that was tried.
	Addr string
	// Err is the transport error.
	Err error
}

// Error names the address and says what to check.
func (e *UnreachableError) Error() string {
	return fmt.Sprintf("agent not reachable at %s: %v; check that `sdsagent run` is running and that --http-addr (or SDSAGENT_HTTP_ADDR) is its HTTP address", e.Addr, e.Err)
}

// Unwrap returns the transport error.
func (e *UnreachableError) Unwrap() error { return e.Err }

// FetchSecrets GETs /debug/secrets from the agent whose HTTP endpoint is
// addr (host:port, or an http:// base URL) and returns the body as
// received. An unspecified host (":15020", "0.0.0.0:15020") means this
// host's loopback, since /debug/ answers only loopback callers. A
// transport failure is an *UnreachableError. It gives up after
// FetchTimeout.
func FetchSecrets(ctx context.Context, addr string) ([]byte, error) {
	u, err := agentURL(addr, "/debug/secrets")
	if err != nil {
		return nil, err
	}
	reqCtx, cancel := context.WithTimeout(ctx, FetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch secrets: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	// No proxy: a proxy would be a non-loopback caller, and the agent is local.
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("fetch secrets: %w", ctx.Err())
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, &UnreachableError{Addr: addr, Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("fetch secrets: read answer from %s: %w", addr, err)
	}
	if len(body) > maxBody {
		return nil, fmt.Errorf("fetch secrets: answer from %s is larger than %d bytes", addr, maxBody)
	}
	msg := firstLine(body)
	switch resp.StatusCode {
	case http.StatusOK:
		return body, nil
	case http.StatusForbidden:
		return nil, fmt.Errorf("fetch secrets: agent at %s refused: %s: run this on the agent's host with a loopback --http-addr", addr, msg)
	case http.StatusNotFound:
		return nil, fmt.Errorf("fetch secrets: agent at %s has no /debug/secrets (404): is it an sdsagent with secrets views enabled?", addr)
	default:
		return nil, fmt.Errorf("fetch secrets: agent at %s answered %s: %s", addr, resp.Status, msg)
	}
}

// agentURL returns the URL of path on the agent at addr.
func agentURL(addr, path string) (string, error) {
	if addr == "" {
		return "", errors.New("fetch secrets: agent HTTP address is empty")
	}
	if strings.Contains(addr, "://") {
		return strings.TrimRight(addr, "/") + path, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("fetch secrets: agent HTTP address %q: %w", addr, err)
	}
	if host == "" {
		host = "127.0.0.1"
	} else if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip.Is6() {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port) + path, nil
}

// firstLine returns the first line of an error body, shortened.
func firstLine(body []byte) string {
	line, _, _ := bytes.Cut(bytes.TrimSpace(body), []byte("\n"))
	if len(line) > 200 {
		line = append(line[:200:200], "..."...)
	}
	return string(line)
}

// ParseSecrets reads a /debug/secrets body (Envoy admin's
// SecretsConfigDump in protojson). Unknown fields are ignored so that a
// newer agent can be read.
func ParseSecrets(data []byte) (*adminv3.SecretsConfigDump, error) {
	dump := &adminv3.SecretsConfigDump{}
	opts := protojson.UnmarshalOptions{DiscardUnknown: true, Resolver: protoregistry.GlobalTypes}
	if err := opts.Unmarshal(data, dump); err != nil {
		return nil, fmt.Errorf("parse secrets dump: %w", err)
	}
	return dump, nil
}

// Select returns a dump holding only the secret named name, active or
// warming. For a name not in dump the error lists the names that are.
func Select(dump *adminv3.SecretsConfigDump, name string) (*adminv3.SecretsConfigDump, error) {
	out := &adminv3.SecretsConfigDump{}
	for _, s := range dump.GetDynamicActiveSecrets() {
		if s.GetName() == name {
			out.DynamicActiveSecrets = append(out.DynamicActiveSecrets, s)
		}
	}
	for _, s := range dump.GetDynamicWarmingSecrets() {
		if s.GetName() == name {
			out.DynamicWarmingSecrets = append(out.DynamicWarmingSecrets, s)
		}
	}
	if len(out.DynamicActiveSecrets)+len(out.DynamicWarmingSecrets) == 0 {
		var names []string
		for _, s := range dump.GetDynamicActiveSecrets() {
			names = append(names, s.GetName())
		}
		served := "nothing"
		if len(names) > 0 {
			served = strings.Join(names, ", ")
		}
		return nil, fmt.Errorf("secret %q is not served; the agent serves: %s", name, served)
	}
	return out, nil
}

// SecretPEM returns the PEM of the active secret named name: the
// certificate chain of a TLS certificate, or the trusted CAs of a
// validation context.
func SecretPEM(dump *adminv3.SecretsConfigDump, name string) ([]byte, error) {
	sel, err := Select(dump, name)
	if err != nil {
		return nil, err
	}
	if len(sel.DynamicActiveSecrets) == 0 {
		return nil, fmt.Errorf("secret %q is not active yet (warming)", name)
	}
	sec, err := unpackSecret(sel.DynamicActiveSecrets[0])
	if err != nil {
		return nil, err
	}
	_, pemBytes, err := certPEM(sec)
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return pemBytes, nil
}

// Table column values, as `istioctl proxy-config secret` prints them.
const (
	typeCertChain = "Cert Chain"
	typeCA        = "CA"
	statusActive  = "ACTIVE"
	statusWarming = "WARMING"
	// statusExpired marks a certificate chain whose leaf is past its
	// NotAfter: the agent no longer hands it to new streams.
	statusExpired = "EXPIRED"
)

// WriteTable writes dump as `istioctl proxy-config secret` does: one row
// per certificate (a CA bundle gives a row per root; SPIFFE trust bundles
// a row per distinct root of all their trust domains), with whether now is
// within its validity, its serial in lowercase hex, and its NotAfter and
// NotBefore in RFC 3339 UTC. A certificate chain whose leaf has expired
// (at now, or as the agent's error_state says) has the status EXPIRED.
func WriteTable(w io.Writer, dump *adminv3.SecretsConfigDump, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 5, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE NAME\tTYPE\tSTATUS\tVALID CERT\tSERIAL NUMBER\tNOT AFTER\tNOT BEFORE")
	for _, entry := range dump.GetDynamicActiveSecrets() {
		sec, err := unpackSecret(entry)
		if err != nil {
			return fmt.Errorf("secrets table: %w", err)
		}
		typ, pemBytes, err := certPEM(sec)
		if err != nil {
			return fmt.Errorf("secrets table: %q: %w", entry.GetName(), err)
		}
		certs, err := pki.ParseCertificates(pemBytes)
		if err != nil {
			return fmt.Errorf("secrets table: %q: %w", entry.GetName(), err)
		}
		status := statusActive
		if typ == typeCertChain && len(certs) > 0 &&
			(strings.HasPrefix(entry.GetErrorState().GetDetails(), ExpiredPrefix) || !now.Before(certs[0].NotAfter)) {
			status = statusExpired
		}
		for _, c := range certs {
			valid := !now.Before(c.NotBefore) && !now.After(c.NotAfter)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%x\t%s\t%s\n", entry.GetName(), typ, status, valid,
				c.SerialNumber, c.NotAfter.UTC().Format(time.RFC3339), c.NotBefore.UTC().Format(time.RFC3339))
		}
	}
	for _, entry := range dump.GetDynamicWarmingSecrets() {
		fmt.Fprintf(tw, "%s\t\t%s\tfalse\n", entry.GetName(), statusWarming)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("secrets table: %w", err)
	}
	return nil
}

// unpackSecret returns the Envoy Secret in entry.
func unpackSecret(entry *adminv3.SecretsConfigDump_DynamicSecret) (*tlsv3.Secret, error) {
	if entry.GetSecret() == nil {
		return nil, fmt.Errorf("secret %q: no content in dump", entry.GetName())
	}
	sec := &tlsv3.Secret{}
	if err := entry.GetSecret().UnmarshalTo(sec); err != nil {
		return nil, fmt.Errorf("secret %q: unpack: %w", entry.GetName(), err)
	}
	return sec, nil
}

// certPEM returns the table type and certificate PEM of sec.
func certPEM(sec *tlsv3.Secret) (string, []byte, error) {
	switch {
	case sec.GetTlsCertificate() != nil:
		b, err := inline(sec.GetTlsCertificate().GetCertificateChain())
		if err != nil {
			return "", nil, fmt.Errorf("certificate chain: %w", err)
		}
		return typeCertChain, b, nil
	case sec.GetValidationContext().GetCustomValidatorConfig() != nil:
		b, err := bundlePEM(sec.GetValidationContext().GetCustomValidatorConfig())
		if err != nil {
			return "", nil, err
		}
		return typeCA, b, nil
	case sec.GetValidationContext() != nil:
		b, err := inline(sec.GetValidationContext().GetTrustedCa())
		if err != nil {
			return "", nil, fmt.Errorf("trusted ca: %w", err)
		}
		return typeCA, b, nil
	default:
		return "", nil, errors.New("neither a TLS certificate nor a validation context")
	}
}

// bundlePEM returns the roots of every trust domain of a SPIFFE
// certificate validator config, each distinct certificate once, in order.
func bundlePEM(cvc *corev3.TypedExtensionConfig) ([]byte, error) {
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	if err := cvc.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		return nil, fmt.Errorf("custom validator %q: %w", cvc.GetName(), err)
	}
	var out []byte
	seen := map[string]bool{}
	for _, td := range cfg.GetTrustDomains() {
		b, err := inline(td.GetTrustBundle())
		if err != nil {
			return nil, fmt.Errorf("trust bundle of %q: %w", td.GetName(), err)
		}
		certs, err := pki.ParseCertificates(b)
		if err != nil {
			return nil, fmt.Errorf("trust bundle of %q: %w", td.GetName(), err)
		}
		for _, c := range certs {
			if !seen[string(c.Raw)] {
				seen[string(c.Raw)] = true
				out = append(out, pki.EncodeCertificates([]*x509.Certificate{c})...)
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("custom validator %q: no trust domains", cvc.GetName())
	}
	return out, nil
}

// inline returns the inline content of ds.
func inline(ds *corev3.DataSource) ([]byte, error) {
	switch s := ds.GetSpecifier().(type) {
	case *corev3.DataSource_InlineBytes:
		return s.InlineBytes, nil
	case *corev3.DataSource_InlineString:
		return []byte(s.InlineString), nil
	case nil:
		return nil, errors.New("empty")
	default:
		return nil, fmt.Errorf("not inline (%T)", s)
	}
}
