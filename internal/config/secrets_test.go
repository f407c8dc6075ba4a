package config

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
)

func TestParseSecrets(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want Secrets
	}{
		{"defaults", nil, nil, Secrets{HTTPAddr: "127.0.0.1:15020", Output: "table"}},
		{"env address", nil, map[string]string{"SDSAGENT_HTTP_ADDR": "127.0.0.1:9"}, Secrets{HTTPAddr: "127.0.0.1:9", Output: "table"}},
		{"flag wins over env", []string{"--http-addr", "127.0.0.1:8"}, map[string]string{"SDSAGENT_HTTP_ADDR": "127.0.0.1:9"},
			Secrets{HTTPAddr: "127.0.0.1:8", Output: "table"}},
		{"NAME before flags", []string{"ROOTCA", "-o", "pem"}, nil, Secrets{HTTPAddr: "127.0.0.1:15020", Output: "pem", Name: "ROOTCA"}},
		{"NAME between flags", []string{"-o", "pem", "default", "--http-addr=h:1"}, nil, Secrets{HTTPAddr: "h:1", Output: "pem", Name: "default"}},
		{"json", []string{"-o", "json"}, nil, Secrets{HTTPAddr: "127.0.0.1:15020", Output: "json"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSecrets(tt.args, env(tt.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("ParseSecrets = %+v, want %+v", got, tt.want)
			}
		})
	}
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"a", "b"}, "unexpected arguments: [b]"},
		{[]string{"-o", "yaml"}, `unknown output format "yaml": want table, json or pem`},
		{[]string{"-o", "json", "default"}, "select with jq instead of NAME"},
		{[]string{"-o", "pem"}, "-o pem needs a NAME"},
	} {
		_, err := ParseSecrets(bad.args, env(nil), io.Discard)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseSecrets(%q) = %v, want an error containing %q", bad.args, err, bad.want)
		}
	}
	var help strings.Builder
	if _, err := ParseSecrets([]string{"--help"}, env(nil), &help); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v, want flag.ErrHelp", err)
	}
	for _, w := range []string{"sdsagent secrets [--http-addr ADDR]", "--http-addr", "SDSAGENT_HTTP_ADDR", "-o ", "table"} {
		if !strings.Contains(help.String(), w) {
			t.Errorf("--help output lacks %q:\n%s", w, help.String())
		}
	}
}
