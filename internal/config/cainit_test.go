package config

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/pki"
)

func TestParseCAInitRoot(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  func(string) string
		want CAInitRoot
	}{
		{
			name: "defaults",
			args: []string{"--dir", "/offline/root"},
			env:  env(),
			want: CAInitRoot{Dir: "/offline/root", CommonName: "sdsagent root CA", TTL: 87600 * time.Hour, KeyType: pki.ECDSAP256,
				Log: Log{Level: "info", Format: "console"}},
		},
		{
			name: "every flag",
			args: []string{"--dir", "r", "--common-name", "Example Root", "--organization", "Example Corp", "--ttl", "43800h", "--key-type", "RSA_4096", "--log-format", "json"},
			env:  env(),
			want: CAInitRoot{Dir: "r", CommonName: "Example Root", Organization: "Example Corp", TTL: 43800 * time.Hour, KeyType: pki.RSA4096,
				Log: Log{Level: "info", Format: "json"}},
		},
		{
			name: "workload key settings do not choose the root key",
			args: []string{"--dir", "r"},
			env:  env("ECC_SIGNATURE_ALGORITHM", "ECDSA", "ECC_CURVE", "P384", "SDSAGENT_LOG_LEVEL", "debug"),
			want: CAInitRoot{Dir: "r", CommonName: "sdsagent root CA", TTL: 87600 * time.Hour, KeyType: pki.ECDSAP256,
				Log: Log{Level: "debug", Format: "console"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCAInitRoot(tt.args, tt.env, &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseCAInitIntermediate(t *testing.T) {
	base := []string{"--root-dir", "/offline/root", "--dir", "/meshes/a", "--trust-domain", "mesh-a.example"}
	tests := []struct {
		name string
		args []string
		want CAInitIntermediate
	}{
		{
			name: "defaults",
			args: base,
			want: CAInitIntermediate{RootDir: "/offline/root", Dir: "/meshes/a", TrustDomain: "mesh-a.example", CommonName: "sdsagent intermediate CA",
				TTL: 8760 * time.Hour, KeyType: pki.ECDSAP256, Log: Log{Level: "info", Format: "console"}},
		},
		{
			name: "every flag",
			args: append(append([]string{}, base...), "--common-name", "Mesh A CA", "--ttl", "720h", "--key-type", "ecdsa-p384", "--name-constraint=false"),
			want: CAInitIntermediate{RootDir: "/offline/root", Dir: "/meshes/a", TrustDomain: "mesh-a.example", CommonName: "Mesh A CA",
				TTL: 720 * time.Hour, KeyType: pki.ECDSAP384, NoNameConstraint: true, Log: Log{Level: "info", Format: "console"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// TRUST_DOMAIN belongs to the agent and `sdsagent ca`; an
			// intermediate's trust domain is always given explicitly.
			got, err := ParseCAInitIntermediate(tt.args, env("TRUST_DOMAIN", "other.example"), &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseCAInitErrors(t *testing.T) {
	inter := func(extra ...string) []string {
		return append([]string{"--root-dir", "r", "--dir", "m", "--trust-domain", "mesh-a.example"}, extra...)
	}
	tests := []struct {
		name    string
		parse   func(args []string) error
		args    []string
		wantErr string
	}{
		{"root: no dir", parseRoot, nil, "--dir is required"},
		{"root: zero ttl", parseRoot, []string{"--dir", "r", "--ttl", "0"}, "--ttl must be positive"},
		{"root: bad ttl", parseRoot, []string{"--dir", "r", "--ttl", "forever"}, "--ttl"},
		{"root: bad key type", parseRoot, []string{"--dir", "r", "--key-type", "dsa"}, `--key-type: unknown key type "dsa"`},
		{"root: bad log level", parseRoot, []string{"--dir", "r", "--log-level", "loud"}, "--log-level"},
		{"root: stray argument", parseRoot, []string{"--dir", "r", "extra"}, "unexpected arguments"},
		{"root: intermediate flag", parseRoot, []string{"--dir", "r", "--trust-domain", "x"}, "trust-domain"},
		{"intermediate: no root dir", parseIntermediate, []string{"--dir", "m", "--trust-domain", "t"}, "--root-dir is required"},
		{"intermediate: no dir", parseIntermediate, []string{"--root-dir", "r", "--trust-domain", "t"}, "--dir is required"},
		{"intermediate: no trust domain", parseIntermediate, []string{"--root-dir", "r", "--dir", "m"}, "--trust-domain is required"},
		{"intermediate: negative ttl", parseIntermediate, inter("--ttl", "-1h"), "--ttl must be positive"},
		{"intermediate: bad name constraint", parseIntermediate, inter("--name-constraint=maybe"), `--name-constraint: "maybe" is not a boolean`},
		{"intermediate: bad key type", parseIntermediate, inter("--key-type", "rsa-1024"), "--key-type"},
		{"intermediate: stray argument", parseIntermediate, inter("extra"), "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.parse(tt.args)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}

func parseRoot(args []string) error {
	_, err := ParseCAInitRoot(args, env(), &bytes.Buffer{})
	return err
}

func parseIntermediate(args []string) error {
	_, err := ParseCAInitIntermediate(args, env(), &bytes.Buffer{})
	return err
}

func TestCAInitHelpListsEverySetting(t *testing.T) {
	tests := []struct {
		name     string
		parse    func(args []string, out *bytes.Buffer) error
		settings []Setting
		usage    string
	}{
		{
			name: "init-root",
			parse: func(args []string, out *bytes.Buffer) error {
				_, err := ParseCAInitRoot(args, env(), out)
				return err
			},
			settings: CAInitRootSettings(),
			usage:    "Usage: sdsagent ca init-root --dir ROOTDIR",
		},
		{
			name: "init-intermediate",
			parse: func(args []string, out *bytes.Buffer) error {
				_, err := ParseCAInitIntermediate(args, env(), out)
				return err
			},
			settings: CAInitIntermediateSettings(),
			usage:    "Usage: sdsagent ca init-intermediate --root-dir ROOTDIR --dir MESHDIR --trust-domain TD",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := tt.parse([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("--help: err = %v, want flag.ErrHelp", err)
			}
			if !strings.Contains(out.String(), tt.usage) {
				t.Errorf("help lacks %q:\n%s", tt.usage, out.String())
			}
			for _, s := range tt.settings {
				if !strings.Contains(out.String(), "--"+s.Flag) {
					t.Errorf("help misses --%s", s.Flag)
				}
			}
		})
	}
}
