package main

import (
	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/cfsslclient"
	"github.com/sdsagent/sdsagent/internal/config"
)

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
