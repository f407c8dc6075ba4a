package config

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestParseAgentCRLFile(t *testing.T) {
	a, err := ParseAgent(nil, env("SDSAGENT_CRL_FILE", "/etc/crl/crl.pem"), &bytes.Buffer{})
	if err != nil || a.CRLFile != "/etc/crl/crl.pem" {
		t.Fatalf("CRLFile from env = %q, %v", a.CRLFile, err)
	}
	a, err = ParseAgent([]string{"--crl-file", "/f.pem"}, env("SDSAGENT_CRL_FILE", "/e.pem"), &bytes.Buffer{})
	if err != nil || a.CRLFile != "/f.pem" {
		t.Fatalf("CRLFile from flag = %q, %v", a.CRLFile, err)
	}
}

func TestParseCACRLValidity(t *testing.T) {
	c, err := ParseCA([]string{"--dir", "d"}, env(), &bytes.Buffer{})
	if err != nil || c.CRLValidity != 24*time.Hour {
		t.Fatalf("default CRLValidity = %s, %v", c.CRLValidity, err)
	}
	c, err = ParseCA([]string{"--dir", "d"}, env("SDSAGENT_CA_CRL_VALIDITY", "2h"), &bytes.Buffer{})
	if err != nil || c.CRLValidity != 2*time.Hour {
		t.Fatalf("CRLValidity from env = %s, %v", c.CRLValidity, err)
	}
	if _, err := ParseCA([]string{"--dir", "d", "--crl-validity", "0s"}, env(), &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "--crl-validity must be positive") {
		t.Fatalf("zero validity: %v", err)
	}
}

func TestParseCARevoke(t *testing.T) {
	c, err := ParseCARevoke([]string{"--dir", "ca", "--serial", "ab:cd", "--reason", "keyCompromise"}, env(), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Dir != "ca" || c.Serial != "ab:cd" || c.Reason != "keyCompromise" || c.CRLValidity != 24*time.Hour || c.Log.Format != "console" {
		t.Fatalf("parsed %+v", c)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no dir", []string{"--serial", "1"}, "--dir is required"},
		{"no serial", []string{"--dir", "ca"}, "--serial is required"},
		{"bad validity", []string{"--dir", "ca", "--serial", "1", "--crl-validity", "-1h"}, "--crl-validity must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCARevoke(tt.args, env(), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}
