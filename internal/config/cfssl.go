package config

import (
	"fmt"
	"net/url"
	"strings"
)

// CAProvider names the protocol the agent speaks to its CA.
type CAProvider string

// Values of CAProvider.
const (
	// ProviderIstio is Istio's IstioCertificateService over gRPC.
	ProviderIstio CAProvider = "istio"
	// ProviderCFSSL is CFSSL's HTTP API (`cfssl serve`); CAAddr is then
	// its base URL.
	ProviderCFSSL CAProvider = "cfssl"
)

// CFSSL configures the CFSSL provider.
type CFSSL struct {
	// AuthKeyFile holds the hex HMAC key; set, requests go to authsign.
	AuthKeyFile string
	// Profile and Label are passed to CFSSL; empty selects its defaults.
	Profile string
	Label   string
}

// cfssl resolves --ca-provider and the --cfssl-* settings.
func (r *resolver) cfssl() (CAProvider, CFSSL) {
	v, from := r.source("ca-provider")
	p := CAProvider(strings.ToLower(strings.TrimSpace(v)))
	if p != ProviderIstio && p != ProviderCFSSL {
		r.fail(fmt.Errorf("%s: %q is not a CA provider: use istio or cfssl", from, v))
	}
	return p, CFSSL{
		AuthKeyFile: r.str("cfssl-auth-key-file"),
		Profile:     r.str("cfssl-profile"),
		Label:       r.str("cfssl-label"),
	}
}

// checkCFSSL checks the settings that depend on the CA provider.
func (a *Agent) checkCFSSL() error {
	if a.CAProvider != ProviderCFSSL {
		if a.CFSSL != (CFSSL{}) {
			return fmt.Errorf("--cfssl-auth-key-file, --cfssl-profile and --cfssl-label need --ca-provider cfssl (SDSAGENT_CA_PROVIDER)")
		}
		return nil
	}
	u, err := url.Parse(a.CAAddr)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return fmt.Errorf("--ca-addr (CA_ADDR): with --ca-provider cfssl it is the CFSSL API base URL, e.g. https://cfssl.pki.svc:8888 or http://127.0.0.1:8888, got %q", a.CAAddr)
	}
	if a.CAPlaintext && u.Scheme == "https" {
		return fmt.Errorf("--ca-plaintext contradicts the https:// --ca-addr %q: with --ca-provider cfssl the scheme of the URL decides TLS", a.CAAddr)
	}
	if a.CARootCert == "" {
		return fmt.Errorf("--ca-root-cert is required with --ca-provider cfssl: the workload roots come from it")
	}
	return nil
}
