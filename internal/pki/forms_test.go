package pki

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/testtools"
)

// opensslInstallHint is how a test's missing openssl is installed.
const opensslInstallHint = "apt-get install -y openssl"

// opensslDir runs sh scripts calling "$OPENSSL" in one temporary directory.
type opensslDir struct {
	t       *testing.T
	dir     string
	openssl string
}

func newOpensslDir(t *testing.T) *opensslDir {
	t.Helper()
	return &opensslDir{t: t, dir: t.TempDir(), openssl: testtools.Need(t, "openssl", opensslInstallHint)}
}

// run runs script with sh in the directory and fails the test on error.
func (d *opensslDir) run(script string) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-ec", script)
	cmd.Dir = d.dir
	cmd.Env = append(os.Environ(), "OPENSSL="+d.openssl)
	if out, err := cmd.CombinedOutput(); err != nil {
		d.t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

func (d *opensslDir) read(name string) []byte {
	d.t.Helper()
	data, err := os.ReadFile(filepath.Join(d.dir, name))
	if err != nil {
		d.t.Fatal(err)
	}
	return data
}

// formCase is a file in a form OpenSSL writes: make writes it to "in";
// either it parses, or the error is wantErr (if set) and names every one
// of wantMsg, and convert, the command the message gives, turns "in" into
// an "out" that parses.
type formCase struct {
	name    string
	make    string
	wantErr error
	wantMsg []string
	convert string
}

// checkForm runs tc in a fresh copy of base's files with parse.
func checkForm(t *testing.T, base *opensslDir, tc formCase, parse func([]byte) error) {
	t.Helper()
	d := &opensslDir{t: t, dir: t.TempDir(), openssl: base.openssl}
	d.run(`cp "` + base.dir + `"/* .; ` + tc.make)
	in := d.read("in")
	err := parse(in)
	if tc.wantMsg == nil {
		if err != nil {
			t.Fatalf("parse: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatal("parse accepted it")
	}
	if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
		t.Errorf("error %q is not %q", err, tc.wantErr)
	}
	for _, w := range tc.wantMsg {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %q", err, w)
		}
	}
	for _, line := range strings.Split(string(in), "\n") {
		if len(line) > 16 && !strings.Contains(line, ":") && strings.Contains(err.Error(), line) {
			t.Fatalf("error quotes the file's content: %q", err)
		}
	}
	// The command the message gives turns it into something that parses.
	d.run(tc.convert)
	if err := parse(d.read("out")); err != nil {
		t.Fatalf("after %q: %v", tc.convert, err)
	}
}

// keyToolsDir holds an RSA key (PKCS#8, as openssl 3 genrsa writes it), a
// P-256 SEC 1 key and a certificate for it.
func keyToolsDir(t *testing.T) *opensslDir {
	t.Helper()
	base := newOpensslDir(t)
	base.run(`"$OPENSSL" genrsa -out rsa.pem 2048 2>/dev/null
"$OPENSSL" ecparam -genkey -noout -name prime256v1 -out ec.pem
"$OPENSSL" req -x509 -new -key ec.pem -subj /CN=forms -days 1 -out cert.pem`)
	return base
}

func TestParsePrivateKeyFormsOpenSSLWrites(t *testing.T) {
	base := keyToolsDir(t)
	const decrypt = `"$OPENSSL" pkey -in in -passin pass:test -out out`
	tests := []formCase{
		{name: "PKCS#8 RSA from genrsa", make: `cp rsa.pem in`},
		{name: "PKCS#1 RSA from genrsa -traditional", make: `"$OPENSSL" rsa -in rsa.pem -traditional -out in`},
		{name: "SEC 1 with EC PARAMETERS from ecparam -genkey", make: `"$OPENSSL" ecparam -genkey -name prime256v1 -out in`},
		{name: "SEC 1 P-384 from ecparam -genkey -noout", make: `"$OPENSSL" ecparam -genkey -noout -name secp384r1 -out in`},
		{name: "PKCS#8 EC from pkey", make: `"$OPENSSL" pkey -in ec.pem -out in`},
		{
			name: "encrypted PKCS#8", make: `"$OPENSSL" pkey -in ec.pem -aes256 -passout pass:test -out in`,
			wantErr: ErrEncryptedKey, wantMsg: []string{`"ENCRYPTED PRIVATE KEY"`, "openssl pkey -in key.pem -out key-plain.pem"},
			convert: decrypt,
		},
		{
			name: "encrypted PKCS#1", make: `"$OPENSSL" rsa -in rsa.pem -traditional -aes256 -passout pass:test -out in`,
			wantErr: ErrEncryptedKey, wantMsg: []string{`"RSA PRIVATE KEY"`, "Proc-Type: 4,ENCRYPTED", "openssl pkey -in key.pem -out key-plain.pem"},
			convert: decrypt,
		},
		{
			name: "encrypted SEC 1", make: `"$OPENSSL" ec -in ec.pem -aes256 -passout pass:test -out in`,
			wantErr: ErrEncryptedKey, wantMsg: []string{"encrypted", "openssl pkey -in key.pem -out key-plain.pem"},
			convert: decrypt,
		},
		{
			name: "DER PKCS#8", make: `"$OPENSSL" pkey -in ec.pem -outform DER -out in`,
			wantErr: ErrDER, wantMsg: []string{"DER", "openssl pkey -inform DER -in key.der -out key.pem"},
			convert: `"$OPENSSL" pkey -inform DER -in in -out out`,
		},
		{
			name: "DER PKCS#1", make: `"$OPENSSL" rsa -in rsa.pem -traditional -outform DER -out in`,
			wantErr: ErrDER, wantMsg: []string{"DER", "openssl pkey -inform DER -in key.der -out key.pem"},
			convert: `"$OPENSSL" pkey -inform DER -in in -out out`,
		},
		{
			name: "PKCS#12 bundle", make: `"$OPENSSL" pkcs12 -export -inkey ec.pem -in cert.pem -passout pass:test -out in`,
			wantErr: ErrDER, wantMsg: []string{"PKCS#12", "openssl pkcs12 -in bundle.p12 -nocerts -nodes -out key.pem"},
			convert: `"$OPENSSL" pkcs12 -in in -nocerts -nodes -passin pass:test -out out`,
		},
		{
			name: "certificate instead of key", make: `cp cert.pem in`,
			wantMsg: []string{`"CERTIFICATE"`, "swapped"},
			convert: `cp ec.pem out`,
		},
		{
			name: "public key", make: `"$OPENSSL" pkey -in ec.pem -pubout -out in`,
			wantMsg: []string{`"PUBLIC KEY"`, "private key is needed"},
			convert: `cp ec.pem out`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkForm(t, base, tc, func(data []byte) error {
				_, err := ParsePrivateKey(data)
				return err
			})
		})
	}
}

func TestParseCertificatesFormsOpenSSLWrites(t *testing.T) {
	base := keyToolsDir(t)
	tests := []formCase{
		{name: "PEM", make: `cp cert.pem in`},
		{name: "PEM after text, as Easy-RSA's issued certificates", make: `"$OPENSSL" x509 -in cert.pem -text -out in`},
		{
			name: "DER", make: `"$OPENSSL" x509 -in cert.pem -outform DER -out in`,
			wantErr: ErrDER, wantMsg: []string{"DER", "openssl x509 -inform DER -in cert.der -out cert.pem"},
			convert: `"$OPENSSL" x509 -inform DER -in in -out out`,
		},
		{
			name: "TRUSTED CERTIFICATE", make: `"$OPENSSL" x509 -in cert.pem -addtrust serverAuth -trustout -out in`,
			wantMsg: []string{`"TRUSTED CERTIFICATE"`, "openssl x509 -in cert.pem -out cert-plain.pem"},
			convert: `"$OPENSSL" x509 -in in -out out`,
		},
		{
			name: "PKCS#7 PEM", make: `"$OPENSSL" crl2pkcs7 -nocrl -certfile cert.pem -out in`,
			wantMsg: []string{"PKCS#7", "openssl pkcs7 -print_certs -in chain.p7b -out chain.pem"},
			convert: `"$OPENSSL" pkcs7 -print_certs -in in -out out`,
		},
		{
			name: "PKCS#7 DER", make: `"$OPENSSL" crl2pkcs7 -nocrl -certfile cert.pem -outform DER -out in`,
			wantErr: ErrDER, wantMsg: []string{"openssl pkcs7 -inform DER -print_certs -in chain.p7b -out chain.pem"},
			convert: `"$OPENSSL" pkcs7 -inform DER -print_certs -in in -out out`,
		},
		{
			name: "key instead of certificate", make: `cp ec.pem in`,
			wantMsg: []string{`"EC PRIVATE KEY"`, "swapped"},
			convert: `cp cert.pem out`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkForm(t, base, tc, func(data []byte) error {
				_, err := ParseCertificates(data)
				return err
			})
		})
	}
}
