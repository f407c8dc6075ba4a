package config

import (
	"fmt"
	"io"
	"time"
)

// CARevoke is the configuration of `sdsagent ca revoke`.
type CARevoke struct {
	Dir         string
	Serial      string
	Reason      string
	CRLValidity time.Duration
	Log         Log
}

// CARevokeSettings lists the settings of `sdsagent ca revoke`. Like the
// init commands it is run at a terminal, so only the CRL validity, shared
// with `sdsagent ca`, and logging read the environment.
func CARevokeSettings() []Setting {
	return []Setting{
		{"dir", "SDSAGENT_CA_DIR", "", "state directory of the CA, as for `sdsagent ca --dir` (required)"},
		{"serial", "", "", "serial number of the certificate to revoke, in hex as `sdsagent secrets` or `openssl x509 -noout -serial` prints it (required)"},
		{"reason", "", "unspecified", "keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, certificateHold, privilegeWithdrawn or unspecified"},
		{"crl-validity", "SDSAGENT_CA_CRL_VALIDITY", "24h", "lifetime of the CRL published as DIR/crl.pem"},
		{"log-level", "SDSAGENT_LOG_LEVEL", "info", "debug, info, warn or error"},
		{"log-format", "SDSAGENT_LOG_FORMAT", "console", "json or console"},
	}
}

// ParseCARevoke parses the arguments of `sdsagent ca revoke`.
func ParseCARevoke(args []string, getenv func(string) string, output io.Writer) (CARevoke, error) {
	settings := CARevokeSettings()
	r, err := parseSettings("sdsagent ca revoke", "sdsagent ca revoke --dir DIR --serial HEX [--reason REASON]", settings, args, getenv, output)
	if err != nil {
		return CARevoke{}, err
	}
	c := CARevoke{
		Dir:         r.str("dir"),
		Serial:      r.str("serial"),
		Reason:      r.str("reason"),
		CRLValidity: r.duration("crl-validity"),
		Log:         Log{Level: r.str("log-level"), Format: r.str("log-format")},
	}
	if err := r.err(); err != nil {
		return CARevoke{}, err
	}
	switch {
	case c.Dir == "":
		return CARevoke{}, fmt.Errorf("--dir is required: the CA's state directory, where the revocation is recorded and crl.pem published")
	case c.Serial == "":
		return CARevoke{}, fmt.Errorf("--serial is required: the hex serial number of the certificate to revoke")
	case c.CRLValidity <= 0:
		return CARevoke{}, fmt.Errorf("--crl-validity must be positive, got %s", c.CRLValidity)
	}
	if err := c.Log.validate(); err != nil {
		return CARevoke{}, err
	}
	return c, nil
}
