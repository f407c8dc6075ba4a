package config

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestParseAgentAllowedCallers(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		env        func(string) string
		uids, gids []uint32
		wantErr    string
	}{
		{name: "default off", env: env()},
		{name: "flags", args: []string{"--allowed-uids", "1337, 0", "--allowed-gids", "1337"}, env: env(), uids: []uint32{1337, 0}, gids: []uint32{1337}},
		{name: "env", env: env("SDSAGENT_ALLOWED_UIDS", "1337", "SDSAGENT_ALLOWED_GIDS", "101,102"), uids: []uint32{1337}, gids: []uint32{101, 102}},
		{name: "flag wins", args: []string{"--allowed-uids", "7"}, env: env("SDSAGENT_ALLOWED_UIDS", "1337"), uids: []uint32{7}},
		{name: "user name", args: []string{"--allowed-uids", "envoy"}, env: env(), wantErr: `--allowed-uids: "envoy" is not a numeric uid`},
		{name: "negative gid", env: env("SDSAGENT_ALLOWED_GIDS", "-1"), wantErr: `SDSAGENT_ALLOWED_GIDS: "-1" is not a numeric gid`},
		{name: "too large", args: []string{"--allowed-uids", "4294967296"}, env: env(), wantErr: "not a numeric uid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := ParseAgent(tt.args, tt.env, &bytes.Buffer{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(a.AllowedUIDs, tt.uids) || !slices.Equal(a.AllowedGIDs, tt.gids) {
				t.Fatalf("uids %v gids %v, want %v %v", a.AllowedUIDs, a.AllowedGIDs, tt.uids, tt.gids)
			}
		})
	}
}

func TestParseCAJWT(t *testing.T) {
	c, err := ParseCA([]string{"--dir", "/ca", "--jwks", "/jwks.json", "--jwt-issuer", "https://kubernetes.default.svc"}, env(), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.JWKSFile != "/jwks.json" || c.JWTIssuer != "https://kubernetes.default.svc" || c.JWTAudience != "istio-ca" {
		t.Fatalf("got %+v", c)
	}
	c, err = ParseCA([]string{"--dir", "/ca"}, env("SDSAGENT_CA_JWKS", "/j", "SDSAGENT_CA_JWT_ISSUER", "iss", "SDSAGENT_CA_JWT_AUDIENCE", "mesh"), &bytes.Buffer{})
	if err != nil || c.JWKSFile != "/j" || c.JWTIssuer != "iss" || c.JWTAudience != "mesh" {
		t.Fatalf("env: %+v, %v", c, err)
	}
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--jwks", "/j"}, "--jwks needs --jwt-issuer"},
		{[]string{"--jwt-issuer", "iss"}, "--jwt-issuer needs --jwks"},
		{[]string{"--jwks", "/j", "--jwt-issuer", "iss", "--jwt-audience", ""}, "--jwt-audience"},
	} {
		_, err := ParseCA(append([]string{"--dir", "/ca"}, tc.args...), env(), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Fatalf("%v: err = %v, want %q", tc.args, err, tc.wantErr)
		}
	}
}
