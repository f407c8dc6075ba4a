package main

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/caclient"
	"github.com/sdsagent/sdsagent/internal/cfsslclient"
	"github.com/sdsagent/sdsagent/internal/config"
)

// signerClient is a CA client: it signs, and is closed when the agent stops.
type signerClient interface {
	cache.Signer
	Close() error
}

// newSigner builds the CA client config.CertPlan chose: nil when the
// certificate comes from mounted files (provider empty).
func newSigner(cfg config.Agent, provider config.CAProvider, log *zap.Logger) (signerClient, error) {
	switch provider {
	case "":
		return nil, nil
	case config.ProviderCFSSL:
		return newCFSSLSigner(cfg, log)
	case config.ProviderIstio:
		return caclient.New(caclient.Config{
			Addr:         cfg.CAAddr,
			RootCertFile: cfg.CARootCert,
			ServerName:   cfg.CAServerName,
			Plaintext:    cfg.CAPlaintext,
			TokenFile:    cfg.TokenFile,
			ClusterID:    cfg.ClusterID,
			Timeout:      cfg.CATimeout,
			Logger:       log,
		})
	default:
		return nil, fmt.Errorf("unknown CA provider %q", provider)
	}
}

// newCFSSLSigner returns the client of a CFSSL CA (--ca-provider cfssl):
// --ca-addr is its API base URL and --ca-root-cert both verifies its TLS
// certificate and holds the roots its signer chains to.
func newCFSSLSigner(cfg config.Agent, log *zap.Logger) (*cfsslclient.Client, error) {
	return cfsslclient.New(cfsslclient.Config{
		URL:          cfg.CAAddr,
		RootCertFile: cfg.CARootCert,
		ServerName:   cfg.CAServerName,
		AuthKeyFile:  cfg.CFSSL.AuthKeyFile,
		Profile:      cfg.CFSSL.Profile,
		Label:        cfg.CFSSL.Label,
		Timeout:      cfg.CATimeout,
		Logger:       log,
	})
}
