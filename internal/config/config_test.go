package config

import (
	"bytes"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/pki"
)

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestParseAgentDefaults(t *testing.T) {
	a, err := ParseAgent(nil, env(), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if a.Socket != "/var/run/secrets/workload-spiffe-uds/socket" || a.HTTPAddr != "127.0.0.1:15020" ||
		a.KeyType != pki.ECDSAP256 || a.SecretTTL != 24*time.Hour || a.GraceRatio != 0.5 || a.GraceJitter != 0.01 ||
		a.TokenFile != "/var/run/secrets/tokens/istio-token" || a.SocketMode != 0o660 || a.TrustDomain != "cluster.local" ||
		a.MountedCerts != MountedAuto || a.CertDir != "/etc/certs" || a.OutputDir != "" || a.FileResync != 30*time.Second ||
		a.TrustAnchors != "" || a.RootOverlap != 0 || a.SPIFFEValidator || a.TrustBundles != nil {
		t.Fatalf("defaults = %+v", a)
	}
}

func TestParseAgentEnvAndFlags(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   func(string) string
		check func(Agent) bool
	}{
		{"istio env vars", nil, env("CA_ADDR", "ca:1", "TRUST_DOMAIN", "example.org", "POD_NAMESPACE", "prod", "SERVICE_ACCOUNT", "api", "SECRET_TTL", "12h", "SECRET_GRACE_PERIOD_RATIO", "0.3", "SECRET_GRACE_PERIOD_RATIO_JITTER", "0.05", "ISTIO_META_CLUSTER_ID", "east"),
			func(a Agent) bool {
				return a.CAAddr == "ca:1" && a.TrustDomain == "example.org" && a.Namespace == "prod" && a.ServiceAccount == "api" &&
					a.SecretTTL == 12*time.Hour && a.GraceRatio == 0.3 && a.GraceJitter == 0.05 && a.ClusterID == "east"
			}},
		{"flag wins over env", []string{"--ca-addr", "flag:2", "--secret-ttl", "1h"}, env("CA_ADDR", "env:1", "SECRET_TTL", "12h"),
			func(a Agent) bool { return a.CAAddr == "flag:2" && a.SecretTTL == time.Hour }},
		{"SECRET_TTL in seconds as Istio allows", nil, env("SECRET_TTL", "3600"), func(a Agent) bool { return a.SecretTTL == time.Hour }},
		{"istio ECDSA P384", nil, env("ECC_SIGNATURE_ALGORITHM", "ECDSA", "ECC_CURVE", "P384"), func(a Agent) bool { return a.KeyType == pki.ECDSAP384 }},
		{"istio RSA size", nil, env("WORKLOAD_RSA_KEY_SIZE", "4096"), func(a Agent) bool { return a.KeyType == pki.RSA4096 }},
		{"--key-type wins over istio env", []string{"--key-type", "rsa-3072"}, env("ECC_SIGNATURE_ALGORITHM", "ECDSA"), func(a Agent) bool { return a.KeyType == pki.RSA3072 }},
		{"socket mode", []string{"--socket-mode", "0600"}, env(), func(a Agent) bool { return a.SocketMode == 0o600 }},
		{"istio FILE_MOUNTED_CERTS and OUTPUT_CERTS", nil, env("FILE_MOUNTED_CERTS", "true", "OUTPUT_CERTS", "/var/run/out", "SDSAGENT_CERT_DIR", "/mnt/certs"),
			func(a Agent) bool {
				return a.MountedCerts == MountedOn && a.OutputDir == "/var/run/out" && a.CertDir == "/mnt/certs"
			}},
		{"FILE_MOUNTED_CERTS false", nil, env("FILE_MOUNTED_CERTS", "false"), func(a Agent) bool { return a.MountedCerts == MountedOff }},
		{"boolean flags alone mean true", []string{"--file-mounted-certs", "--ca-plaintext", "--cert-dir", "/d"}, env("FILE_MOUNTED_CERTS", "false"),
			func(a Agent) bool { return a.MountedCerts == MountedOn && a.CAPlaintext && a.CertDir == "/d" }},
		{"boolean flags with a value", []string{"--file-mounted-certs=false", "--release-startup-memory=false"}, env(),
			func(a Agent) bool { return a.MountedCerts == MountedOff && !a.ReleaseMemory }},
		{"file flags win over env", []string{"--file-mounted-certs=auto", "--cert-dir", "/flag", "--output-dir", "/out", "--file-resync", "45s"},
			env("FILE_MOUNTED_CERTS", "false", "SDSAGENT_CERT_DIR", "/env", "OUTPUT_CERTS", "/env-out", "SDSAGENT_FILE_RESYNC", "1m"),
			func(a Agent) bool {
				return a.MountedCerts == MountedAuto && a.CertDir == "/flag" && a.OutputDir == "/out" && a.FileResync == 45*time.Second
			}},
		{"trust settings from env", nil,
			env("SDSAGENT_TRUST_ANCHORS", "/etc/anchors.pem", "SDSAGENT_ROOT_OVERLAP", "48h", "SDSAGENT_SPIFFE_VALIDATOR", "true",
				"SDSAGENT_TRUST_BUNDLES", "b.example=/b.pem, a.example=/a.pem"),
			func(a Agent) bool {
				return a.TrustAnchors == "/etc/anchors.pem" && a.RootOverlap == 48*time.Hour && a.SPIFFEValidator &&
					slices.Equal(a.TrustBundles, []TrustBundle{{"b.example", "/b.pem"}, {"a.example", "/a.pem"}})
			}},
		{"repeated and comma-separated --trust-bundle win over env, in order",
			[]string{"--trust-bundle", "c.example=/c.pem", "--trust-bundle", "a.example=/a.pem,b.example=/b.pem", "--spiffe-validator", "--root-overlap", "3600"},
			env("SDSAGENT_TRUST_BUNDLES", "d.example=/d.pem", "SDSAGENT_SPIFFE_VALIDATOR", "false"),
			func(a Agent) bool {
				return a.SPIFFEValidator && a.RootOverlap == time.Hour &&
					slices.Equal(a.TrustBundles, []TrustBundle{{"c.example", "/c.pem"}, {"a.example", "/a.pem"}, {"b.example", "/b.pem"}})
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := ParseAgent(tt.args, tt.env, &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(a) {
				t.Fatalf("got %+v", a)
			}
		})
	}
}

func TestParseAgentErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     func(string) string
		wantErr string
	}{
		{"bad ttl env", nil, env("SECRET_TTL", "soon"), "SECRET_TTL"},
		{"bad ratio", []string{"--grace-ratio", "1.5"}, env(), "grace-ratio"},
		{"ratio plus jitter", []string{"--grace-ratio", "0.9", "--grace-jitter", "0.2"}, env(), "grace-jitter"},
		{"bad key type", []string{"--key-type", "dsa"}, env(), "--key-type"},
		{"bad istio curve", nil, env("ECC_SIGNATURE_ALGORITHM", "ECDSA", "ECC_CURVE", "P521"), "ECC_CURVE"},
		{"bad log format", []string{"--log-format", "xml"}, env(), "log-format"},
		{"bad socket mode", []string{"--socket-mode", "rw"}, env(), "socket-mode"},
		{"no root without plaintext", []string{"--ca-root-cert", ""}, env(), "--ca-root-cert"},
		{"bad FILE_MOUNTED_CERTS", nil, env("FILE_MOUNTED_CERTS", "maybe"), "FILE_MOUNTED_CERTS"},
		{"mounted certs without dir", []string{"--file-mounted-certs", "true", "--cert-dir", ""}, env(), "--cert-dir"},
		{"bad file resync", []string{"--file-resync", "0"}, env(), "--file-resync"},
		{"negative root overlap", []string{"--root-overlap", "-1h"}, env(), "--root-overlap"},
		{"bad root overlap env", nil, env("SDSAGENT_ROOT_OVERLAP", "a while"), "SDSAGENT_ROOT_OVERLAP"},
		{"trust bundle without path", []string{"--trust-bundle", "b.example"}, env(), "TD=PATH"},
		{"trust bundle for the own trust domain", []string{"--trust-bundle", "cluster.local=/x.pem"}, env(), "--trust-anchors"},
		{"trust bundle twice", nil, env("SDSAGENT_TRUST_BUNDLES", "b.example=/1.pem,b.example=/2.pem"), "twice"},
		{"trust bundle with a bad trust domain", []string{"--trust-bundle", "spiffe://b.example=/b.pem"}, env(), "invalid trust domain"},
		{"bad spiffe validator", nil, env("SDSAGENT_SPIFFE_VALIDATOR", "sometimes"), "SDSAGENT_SPIFFE_VALIDATOR"},
		{"unknown flag", []string{"--nope"}, env(), "nope"},
		{"stray argument", []string{"extra"}, env(), "unexpected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseAgent(tt.args, tt.env, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseCA(t *testing.T) {
	c, err := ParseCA([]string{"--dir", "/tmp/ca", "--server-names", "ca.example, 10.0.0.1"}, env("TRUST_DOMAIN", "example.org"), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:15012" || c.Dir != "/tmp/ca" || c.TrustDomain != "example.org" || c.MaxTTL != 24*time.Hour || len(c.ServerNames) != 2 {
		t.Fatalf("got %+v", c)
	}
	if _, err := ParseCA(nil, env(), &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "--dir") {
		t.Fatalf("missing --dir: %v", err)
	}
}

func TestUsageListsEverySetting(t *testing.T) {
	var buf bytes.Buffer
	PrintUsage(&buf, "sdsagent run", AgentSettings())
	for _, s := range AgentSettings() {
		if !strings.Contains(buf.String(), "--"+s.Flag) || !strings.Contains(buf.String(), s.Env) {
			t.Fatalf("usage misses %s", s.Flag)
		}
	}
}

// TestREADMEDocumentsEverySetting keeps the README's table in step with
// the flags: each flag and env var must appear in it.
func TestREADMEDocumentsEverySetting(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slices.Concat(AgentSettings(), CASettings(), CAInitRootSettings(), CAInitIntermediateSettings(), CARevokeSettings(), SecretsSettings()) {
		dashes := "--"
		if len(s.Flag) == 1 {
			dashes = "-" // a one-letter flag, like secrets' -o, is written so
		}
		if !strings.Contains(string(readme), "`"+dashes+s.Flag+"`") {
			t.Errorf("README does not document --%s", s.Flag)
		}
	}
	for _, s := range AgentSettings() {
		if !strings.Contains(string(readme), "`"+s.Env+"`") {
			t.Errorf("README does not document %s", s.Env)
		}
	}
}
