package cache

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzParseFileName checks file-backed resource name parsing: it never
// panics, accepts exactly the documented forms with absolute paths, and
// what it accepts names itself (the parts join back to the name). The
// manager's CheckName agrees with it.
func FuzzParseFileName(f *testing.F) {
	for _, s := range []string{
		"file-cert:/etc/certs/tls.crt~/etc/certs/tls.key",
		"file-root:/etc/certs/ca.crt",
		SystemRootName,
		"file-root:system ",
		"file-root:",
		"file-cert:",
		"file-cert:~",
		"file-cert:/a~",
		"file-cert:~/b",
		"file-cert:/a~/b~/c",
		"file-cert:a~b",
		"file-cert:/a/../../etc/shadow~/proc/self/environ",
		"file-root:relative/ca.pem",
		"file-root:/dev/zero",
		"file-root:/" + strings.Repeat("a", 5000),
		"file-cert:/a\x00b~/c",
		"file-root:system\n",
		"FILE-ROOT:/x",
		"default",
		"ROOTCA",
		"ALL",
		"",
	} {
		f.Add(s)
	}
	m, err := New(Config{MountedCertDir: "/nonexistent-fuzz-dir"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, name string) {
		spec, err := parseFileName(name)
		checkErr := m.CheckName(name)
		fixed := name == WorkloadCertName || name == RootCertName || name == AllBundlesName
		if (checkErr == nil) != (err == nil || fixed) {
			t.Fatalf("CheckName(%q) = %v but parseFileName error is %v", name, checkErr, err)
		}
		if checkErr != nil && checkErr.Error() == "" {
			t.Fatal("empty CheckName error")
		}
		if err != nil {
			if spec != (fileSpec{}) {
				t.Fatalf("error %v with spec %+v", err, spec)
			}
			if isFileName(name) && !strings.Contains(err.Error(), "want file-") && !strings.Contains(err.Error(), "not file-backed") {
				t.Fatalf("error for a file-backed name does not show the expected form: %v", err)
			}
			return
		}
		if !isFileName(name) {
			t.Fatalf("parsed %q, which is not file-backed", name)
		}
		switch spec.kind {
		case TLSCertificate:
			if spec.system || spec.ca != "" {
				t.Fatalf("certificate spec with a CA: %+v", spec)
			}
			for _, p := range []string{spec.cert, spec.key} {
				if p == "" || !filepath.IsAbs(p) || strings.Contains(p, "~") {
					t.Fatalf("%q: bad path %q accepted", name, p)
				}
			}
			if got := FileCertPrefix + spec.cert + "~" + spec.key; got != name {
				t.Fatalf("%q parses to parts that join to %q", name, got)
			}
			if !slices.Equal(spec.paths(nil), []string{spec.cert, spec.key}) {
				t.Fatalf("paths %v", spec.paths(nil))
			}
		case ValidationContext:
			if spec.cert != "" || spec.key != "" {
				t.Fatalf("validation spec with a certificate: %+v", spec)
			}
			if spec.system {
				if name != SystemRootName || spec.ca != "" {
					t.Fatalf("%q parsed as the system bundle", name)
				}
				break
			}
			if !filepath.IsAbs(spec.ca) || FileRootPrefix+spec.ca != name {
				t.Fatalf("%q: bad CA path %q accepted", name, spec.ca)
			}
			if !slices.Equal(spec.paths(nil), []string{spec.ca}) {
				t.Fatalf("paths %v", spec.paths(nil))
			}
		default:
			t.Fatalf("%q parsed to kind %v", name, spec.kind)
		}
	})
}
