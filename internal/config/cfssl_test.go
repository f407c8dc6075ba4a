package config

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseAgentCAProvider(t *testing.T) {
	a, err := ParseAgent(nil, env(), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if a.CAProvider != ProviderIstio || a.CFSSL != (CFSSL{}) {
		t.Fatalf("default provider = %q %+v, want istio and no cfssl settings", a.CAProvider, a.CFSSL)
	}

	a, err = ParseAgent([]string{"--ca-addr", "https://cfssl.pki.svc:8888", "--cfssl-profile", "mesh", "--cfssl-label", "primary"},
		env("SDSAGENT_CA_PROVIDER", "cfssl", "SDSAGENT_CFSSL_AUTH_KEY_FILE", "/etc/cfssl/key"), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	want := CFSSL{AuthKeyFile: "/etc/cfssl/key", Profile: "mesh", Label: "primary"}
	if a.CAProvider != ProviderCFSSL || a.CFSSL != want || a.CAAddr != "https://cfssl.pki.svc:8888" {
		t.Fatalf("cfssl = %q %+v addr %q, want cfssl %+v", a.CAProvider, a.CFSSL, a.CAAddr, want)
	}

	a, err = ParseAgent([]string{"--ca-provider", "cfssl", "--ca-addr", "http://127.0.0.1:8888"}, env(), &bytes.Buffer{})
	if err != nil || a.CAProvider != ProviderCFSSL {
		t.Fatalf("plain http CFSSL: %v %q", err, a.CAProvider)
	}
}

func TestParseAgentCAProviderErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown provider", []string{"--ca-provider", "vault"}, `"vault" is not a CA provider: use istio or cfssl`},
		{"cfssl with a host:port address", []string{"--ca-provider", "cfssl", "--ca-addr", "cfssl.pki.svc:8888"}, "CFSSL API base URL"},
		{"cfssl with the default istiod address", []string{"--ca-provider", "cfssl"}, "CFSSL API base URL"},
		{"cfssl plaintext with https", []string{"--ca-provider", "cfssl", "--ca-addr", "https://c:8888", "--ca-plaintext"}, "--ca-plaintext contradicts"},
		{"cfssl without roots", []string{"--ca-provider", "cfssl", "--ca-addr", "http://c:8888", "--ca-root-cert", ""}, "--ca-root-cert is required with --ca-provider cfssl"},
		{"cfssl settings with istio", []string{"--cfssl-profile", "mesh"}, "need --ca-provider cfssl"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAgent(tc.args, env(), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
