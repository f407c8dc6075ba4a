package config

import (
	"bytes"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/pki"
)

// fuzzEnv turns "K=V" lines into a getenv function.
func fuzzEnv(lines string) func(string) string {
	m := map[string]string{}
	for _, l := range strings.Split(lines, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return func(k string) string { return m[k] }
}

// fuzzArgs splits arguments on newlines; an empty string is no argument.
func fuzzArgs(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// FuzzParseAgent feeds arbitrary arguments and environment to ParseAgent:
// it never panics, parses the same input the same way twice, and an Agent
// it returns holds only values the agent can run with.
func FuzzParseAgent(f *testing.F) {
	seeds := [][2]string{
		{"", ""},
		{"--ca-addr\nca:1\n--secret-ttl\n1h", "CA_ADDR=env:1\nSECRET_TTL=12h"},
		{"", "SECRET_TTL=3600\nSECRET_GRACE_PERIOD_RATIO=0.3\nSECRET_GRACE_PERIOD_RATIO_JITTER=0.05"},
		{"", "SECRET_TTL=18446744074"},
		{"--secret-ttl=9223372036854775807", ""},
		{"--file-resync=-1s", ""},
		{"--grace-ratio=NaN", ""},
		{"--grace-ratio=0.5\n--grace-jitter=0.4999999999", ""},
		{"", "ECC_SIGNATURE_ALGORITHM=ECDSA\nECC_CURVE=P384"},
		{"", "WORKLOAD_RSA_KEY_SIZE=4096"},
		{"", "WORKLOAD_RSA_KEY_SIZE= 12 "},
		{"--key-type\nrsa-3072", "ECC_SIGNATURE_ALGORITHM=ECDSA"},
		{"--socket-mode\n0600", ""},
		{"--socket-mode=0o777", ""},
		{"--socket-mode=1777", ""},
		{"--file-mounted-certs\n--ca-plaintext\n--cert-dir\n/d", "FILE_MOUNTED_CERTS=false"},
		{"--file-mounted-certs=AUTO", ""},
		{"--trust-bundle\nmesh-b.example=/etc/b.pem\n--trust-bundle\nmesh-c=/etc/c.pem", ""},
		{"", "SDSAGENT_TRUST_BUNDLES=mesh-b.example=/etc/b.pem, mesh-c=/etc/c.pem,"},
		{"--trust-bundle=cluster.local=/x", ""},
		{"--trust-bundle=a=/x,a=/y", ""},
		{"--trust-bundle=A=/x", ""},
		{"--trust-bundle==", ""},
		{"--root-overlap=-1h", ""},
		{"--log-level=trace", "SDSAGENT_LOG_FORMAT=text"},
		{"-h", ""},
		{"--ca-addr", ""},
		{"extra", ""},
		{"--ca-addr=\n--ca-plaintext=false\n--ca-root-cert=", ""},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, args, env string) {
		var out bytes.Buffer
		a, err := ParseAgent(fuzzArgs(args), fuzzEnv(env), &out)
		if err == nil {
			checkAgent(t, a)
		} else if err.Error() == "" {
			t.Fatal("empty error")
		}
		var out2 bytes.Buffer
		b, err2 := ParseAgent(fuzzArgs(args), fuzzEnv(env), &out2)
		if fmt.Sprint(err) != fmt.Sprint(err2) || !reflect.DeepEqual(a, b) {
			t.Fatalf("two parses differ: %v / %v", err, err2)
		}
	})
}

// checkAgent fails unless a holds values the agent can run with.
func checkAgent(t *testing.T, a Agent) {
	t.Helper()
	switch {
	case a.CAAddr == "":
		t.Fatal("empty CA address accepted")
	case !a.CAPlaintext && a.CARootCert == "":
		t.Fatal("TLS without CA roots accepted")
	case a.SecretTTL <= 0, a.FileResync <= 0, a.CATimeout < 0, a.RootOverlap < 0:
		t.Fatalf("bad durations accepted: ttl %s, resync %s, ca timeout %s, overlap %s", a.SecretTTL, a.FileResync, a.CATimeout, a.RootOverlap)
	case !(a.GraceRatio > 0 && a.GraceRatio < 1) || !(a.GraceJitter >= 0) || !(a.GraceRatio+a.GraceJitter < 1):
		t.Fatalf("grace ratio %v and jitter %v accepted", a.GraceRatio, a.GraceJitter)
	case a.SocketMode > 0o777:
		t.Fatalf("socket mode %o accepted", a.SocketMode)
	case a.MountedCerts != MountedAuto && a.MountedCerts != MountedOn && a.MountedCerts != MountedOff:
		t.Fatalf("mounted certs %q accepted", a.MountedCerts)
	case a.MountedCerts != MountedOff && a.CertDir == "":
		t.Fatal("empty cert dir accepted")
	}
	if _, err := pki.ParseKeyType(string(a.KeyType)); err != nil {
		t.Fatalf("key type %q accepted: %v", a.KeyType, err)
	}
	if err := a.Log.validate(); err != nil {
		t.Fatalf("log settings accepted: %v", err)
	}
	checkTrustBundles(t, a.TrustBundles, a.TrustDomain)
}

func checkTrustBundles(t *testing.T, bundles []TrustBundle, own string) {
	t.Helper()
	seen := map[string]bool{}
	for _, b := range bundles {
		if err := pki.CheckTrustDomain(b.TrustDomain); err != nil {
			t.Fatalf("trust bundle domain accepted: %v", err)
		}
		if b.TrustDomain == own || seen[b.TrustDomain] {
			t.Fatalf("trust bundle %q: own or repeated trust domain accepted", b.TrustDomain)
		}
		seen[b.TrustDomain] = true
		if b.Path == "" || b.Path != strings.TrimSpace(b.Path) || strings.Contains(b.Path, ",") {
			t.Fatalf("trust bundle path %q accepted", b.Path)
		}
	}
}

// FuzzTrustBundles checks --trust-bundle and SDSAGENT_TRUST_BUNDLES: the
// flag (given once per item) and the variable (comma-separated) parse the
// same value the same way, and an accepted list prints back to itself.
func FuzzTrustBundles(f *testing.F) {
	for _, s := range [][2]string{
		{"mesh-b.example=/etc/bundles/mesh-b.pem", "cluster.local"},
		{"a=/x, b=/y ,", "cluster.local"},
		{"cluster.local=/x", "cluster.local"},
		{"a=/x,a=/y", "cluster.local"},
		{"a=", "cluster.local"},
		{"=/x", "cluster.local"},
		{"a=/x=y", "cluster.local"},
		{"Mesh=/x", "cluster.local"},
		{"spiffe://a=/x", "cluster.local"},
		{"a b=/x", "cluster.local"},
		{",,,", "cluster.local"},
		{"a=/x", "a"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, value, own string) {
		if strings.ContainsAny(own, "\n=") || strings.Contains(value, "\n") {
			return // not expressible in fuzzEnv's lines
		}
		getenv := fuzzEnv("SDSAGENT_TRUST_BUNDLES=" + value + "\nTRUST_DOMAIN=" + own + "\nCA_PLAINTEXT=true")
		fromEnv, envErr := ParseAgent([]string{"--ca-plaintext"}, getenv, &bytes.Buffer{})
		args := []string{"--ca-plaintext", "--trust-domain=" + own}
		for _, item := range strings.Split(value, ",") {
			args = append(args, "--trust-bundle="+item)
		}
		fromFlags, flagErr := ParseAgent(args, fuzzEnv(""), &bytes.Buffer{})
		if (envErr == nil) != (flagErr == nil) {
			t.Fatalf("env error %v, flag error %v", envErr, flagErr)
		}
		if envErr != nil {
			return
		}
		if !reflect.DeepEqual(fromEnv.TrustBundles, fromFlags.TrustBundles) {
			t.Fatalf("env gives %v, flags give %v", fromEnv.TrustBundles, fromFlags.TrustBundles)
		}
		checkTrustBundles(t, fromEnv.TrustBundles, strings.TrimSpace(own))
		var items []string
		for _, b := range fromEnv.TrustBundles {
			items = append(items, b.TrustDomain+"="+b.Path)
		}
		again, err := ParseAgent([]string{"--ca-plaintext", "--trust-domain=" + own, "--trust-bundle=" + strings.Join(items, ",")}, fuzzEnv(""), &bytes.Buffer{})
		if err != nil || !reflect.DeepEqual(again.TrustBundles, fromEnv.TrustBundles) {
			t.Fatalf("%v prints as %q, which parses as %v, %v", fromEnv.TrustBundles, strings.Join(items, ","), again.TrustBundles, err)
		}
	})
}

// FuzzParseDuration checks the duration syntax of every duration
// setting: plain seconds (as Istio's SECRET_TTL) mean exactly that many
// seconds, and Go durations parse as time.ParseDuration does.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"24h", "90m", "3600", "0", "-1", "1.5h", "9223372036", "9223372037", "18446744074", "-9223372037", "1e3", " 1h", "+5", "0x10", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseDuration(s)
		if secs, perr := strconv.ParseInt(s, 10, 64); perr == nil {
			if err != nil {
				if secs <= maxDurationSeconds && secs >= -maxDurationSeconds {
					t.Fatalf("%q seconds refused: %v", s, err)
				}
				return
			}
			if d/time.Second != time.Duration(secs) || d%time.Second != 0 {
				t.Fatalf("%q seconds parsed as %s", s, d)
			}
			return
		}
		want, werr := time.ParseDuration(s)
		if (err == nil) != (werr == nil) || d != want {
			t.Fatalf("parseDuration(%q) = %s, %v; time.ParseDuration gives %s, %v", s, d, err, want, werr)
		}
	})
}
