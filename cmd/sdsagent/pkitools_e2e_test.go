package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testtools"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// Install hints for the tools these tests run.
const (
	opensslHint = "apt-get install -y openssl"
	easyrsaHint = "apt-get install -y easy-rsa"
)

// debianEasyRSA is where Debian's easy-rsa package puts the command; it
// is not on PATH.
const debianEasyRSA = "/usr/share/easy-rsa/easyrsa"

// needEasyRSA returns the easyrsa command: from the tools dir or PATH,
// else Debian's place, else the test skips (fails in CI).
func needEasyRSA(t *testing.T) string {
	t.Helper()
	if p := testtools.Find(os.Getenv, "easyrsa"); p != "" {
		return p
	}
	if fi, err := os.Stat(debianEasyRSA); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
		return debianEasyRSA
	}
	return testtools.Need(t, "easyrsa", easyrsaHint)
}

// script runs an sh script in dir with env added, bounded by a timeout
// that leaves room for RSA key generation on a loaded machine, and
// returns its output. A failure ends the test with the output.
func script(t *testing.T, dir, body string, env ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-ec", body)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("script failed: %v\n%s\n--- output:\n%s", err, body, out)
	}
	return string(out)
}

// easyRSAScript builds an offline root and a mesh intermediate with
// Easy-RSA, the intermediate in its own PKI whose request the root signs
// with "sign-req ca", and lays them out as `sdsagent ca --dir` wants.
// docs/pki-tools.md gives the same commands.
const easyRSAScript = `
export EASYRSA_BATCH=1
# The offline root.
EASYRSA_PKI="$PWD/root-pki" "$EASYRSA" init-pki
EASYRSA_PKI="$PWD/root-pki" EASYRSA_REQ_CN="Example Root CA" "$EASYRSA" build-ca nopass
# The mesh's intermediate: its own PKI makes the key and the request ...
EASYRSA_PKI="$PWD/mesh-pki" "$EASYRSA" init-pki
EASYRSA_PKI="$PWD/mesh-pki" EASYRSA_REQ_CN="cluster.local mesh CA" "$EASYRSA" build-ca nopass subca
# ... which the root imports and signs as a CA.
EASYRSA_PKI="$PWD/root-pki" "$EASYRSA" import-req "$PWD/mesh-pki/reqs/ca.req" mesh
EASYRSA_PKI="$PWD/root-pki" "$EASYRSA" sign-req ca mesh
# Istio's plugged-in CA layout.
mkdir -m 700 cacerts
cp mesh-pki/private/ca.key cacerts/ca-key.pem
cp root-pki/issued/mesh.crt cacerts/ca-cert.pem
cp root-pki/ca.crt cacerts/root-cert.pem
cat root-pki/issued/mesh.crt root-pki/ca.crt > cacerts/cert-chain.pem
`

// opensslGuideScript is the certificate guide's OpenSSL steps: a root
// from genrsa and "req -x509 -new -nodes" with ca.conf, an intermediate
// key ($GENKEY), a CSR from csr.conf and "x509 -req ... -extfile". With
// $NAME_CONSTRAINT set, the intermediate may only sign SPIFFE IDs in that
// trust domain. docs/pki-tools.md gives the same commands.
const opensslGuideScript = `
cat > ca.conf <<EOF
[ req ]
prompt = no
default_md = sha256
distinguished_name = dn
x509_extensions = ext
[ dn ]
O = Example Corp
CN = Example Root CA
[ ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
cat > csr.conf <<EOF
[ req ]
prompt = no
default_md = sha256
distinguished_name = dn
req_extensions = ext
[ dn ]
O = cluster.local
CN = cluster.local mesh CA
[ ext ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
if [ -n "${NAME_CONSTRAINT:-}" ]; then
  echo "nameConstraints = critical, permitted;URI:$NAME_CONSTRAINT, excluded;URI:.$NAME_CONSTRAINT" >> csr.conf
fi
"$OPENSSL" genrsa -out root-key.pem 2048
"$OPENSSL" req -x509 -new -nodes -key root-key.pem -days 3650 -config ca.conf -out root-cert.pem
eval "$GENKEY"
"$OPENSSL" req -new -key ca-key.pem -config csr.conf -out ca.csr
"$OPENSSL" x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial \
  -days 730 -extfile csr.conf -extensions ext -out ca-cert.pem
mkdir -m 700 cacerts
cp ca-key.pem ca-cert.pem root-cert.pem cacerts/
cat ca-cert.pem root-cert.pem > cacerts/cert-chain.pem
`

// servedByPluggedCA runs `sdsagent ca --dir caDir` and an agent against
// it, and returns what the agent serves over SDS. It checks that ROOTCA
// is the root in rootFile and that the chain is leaf then ca-cert.pem.
func servedByPluggedCA(t *testing.T, caDir, rootFile string) sdstest.Identity {
	t.Helper()
	ca := startCAIn(t, caDir, "127.0.0.1:0")
	id := identity(t, startAgent(t, ca.agentArgs(filepath.Join(tempDir(t), "s.sock"))).socket)

	root := readCertFile(t, rootFile)
	served, err := pki.ParseCertificates(id.Roots.GetValidationContext().GetTrustedCa().GetInlineBytes())
	if err != nil || len(served) != 1 || !served[0].Equal(root) {
		t.Fatalf("ROOTCA is not the root in %s: %d certificates, %v", rootFile, len(served), err)
	}
	chain, err := pki.ParseCertificates(id.Cert.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || !chain[1].Equal(readCertFile(t, filepath.Join(caDir, "ca-cert.pem"))) {
		t.Fatalf("served chain has %d certificates, want the leaf and ca-cert.pem", len(chain))
	}
	return id
}

// opensslVerify checks the served chain with the real `openssl verify
// -CAfile rootFile -untrusted <intermediates> <leaf>`, as a TLS client and
// as a TLS server certificate.
func opensslVerify(t *testing.T, openssl string, id sdstest.Identity, rootFile string) {
	t.Helper()
	chain, err := pki.ParseCertificates(id.Cert.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	leaf, mids := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "intermediates.pem")
	writeFile(t, leaf, pki.EncodeCertificates(chain[:1]))
	writeFile(t, mids, pki.EncodeCertificates(chain[1:]))
	for _, purpose := range []string{"sslclient", "sslserver"} {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		out, err := exec.CommandContext(ctx, openssl, "verify", "-purpose", purpose,
			"-CAfile", rootFile, "-untrusted", mids, leaf).CombinedOutput()
		cancel()
		if err != nil || !strings.Contains(string(out), "leaf.pem: OK") {
			t.Fatalf("openssl verify -purpose %s: %v\n%s", purpose, err, out)
		}
	}
}

func TestEasyRSAPluggedInCA(t *testing.T) {
	easyrsa := needEasyRSA(t)
	openssl := testtools.Need(t, "openssl", opensslHint)
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{name: "rsa", env: nil},
		{name: "ec", env: []string{"EASYRSA_ALGO=ec", "EASYRSA_CURVE=prime256v1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tempDir(t)
			script(t, dir, easyRSAScript, append([]string{"EASYRSA=" + easyrsa}, tc.env...)...)
			rootFile := filepath.Join(dir, "root-pki", "ca.crt")
			id := servedByPluggedCA(t, filepath.Join(dir, "cacerts"), rootFile)
			opensslVerify(t, openssl, id, rootFile)
		})
	}
}

func TestOpenSSLGuidePluggedInCA(t *testing.T) {
	openssl := testtools.Need(t, "openssl", opensslHint)
	const rsaKey = `"$OPENSSL" genrsa -out ca-key.pem 2048`
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{name: "rsa", env: []string{"GENKEY=" + rsaKey}},
		{name: "rsa with name constraint", env: []string{"GENKEY=" + rsaKey, "NAME_CONSTRAINT=cluster.local"}},
		{name: "PKCS#1 key", env: []string{`GENKEY="$OPENSSL" genrsa -traditional -out ca-key.pem 2048`}},
		{name: "SEC 1 key from ecparam", env: []string{`GENKEY="$OPENSSL" ecparam -genkey -name prime256v1 -out ca-key.pem`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tempDir(t)
			script(t, dir, opensslGuideScript, append([]string{"OPENSSL=" + openssl}, tc.env...)...)
			rootFile := filepath.Join(dir, "root-cert.pem")
			id := servedByPluggedCA(t, filepath.Join(dir, "cacerts"), rootFile)
			opensslVerify(t, openssl, id, rootFile)
		})
	}
}

// TestPluggedInCAFileForms gives `sdsagent ca` files in forms OpenSSL
// writes but the CA does not take: it refuses them naming the file, the
// form and the openssl command, and starts once that command has run.
func TestPluggedInCAFileForms(t *testing.T) {
	openssl := testtools.Need(t, "openssl", opensslHint)
	base := tempDir(t)
	script(t, base, opensslGuideScript, "OPENSSL="+openssl,
		`GENKEY="$OPENSSL" ecparam -genkey -noout -name prime256v1 -out ca-key.pem`)
	for _, tc := range []struct {
		name    string
		breakIt string
		want    []string
		fix     string
	}{
		{
			name:    "encrypted key",
			breakIt: `"$OPENSSL" pkey -in ca-key.pem -aes256 -passout pass:test -out cacerts/ca-key.pem`,
			want:    []string{"ca-key.pem", "private key is encrypted", "openssl pkey -in key.pem -out key-plain.pem"},
			fix:     `"$OPENSSL" pkey -in cacerts/ca-key.pem -passin pass:test -out k.tmp && mv k.tmp cacerts/ca-key.pem`,
		},
		{
			name:    "DER key",
			breakIt: `"$OPENSSL" pkey -in ca-key.pem -outform DER -out cacerts/ca-key.pem`,
			want:    []string{"ca-key.pem", "binary DER", "openssl pkey -inform DER -in key.der -out key.pem"},
			fix:     `"$OPENSSL" pkey -inform DER -in cacerts/ca-key.pem -out k.tmp && mv k.tmp cacerts/ca-key.pem`,
		},
		{
			name:    "DER certificate",
			breakIt: `"$OPENSSL" x509 -in ca-cert.pem -outform DER -out cacerts/ca-cert.pem`,
			want:    []string{"ca-cert.pem", "binary DER", "openssl x509 -inform DER -in cert.der -out cert.pem"},
			fix:     `"$OPENSSL" x509 -inform DER -in cacerts/ca-cert.pem -out c.tmp && mv c.tmp cacerts/ca-cert.pem`,
		},
		{
			name:    "DER root",
			breakIt: `"$OPENSSL" x509 -in root-cert.pem -outform DER -out cacerts/root-cert.pem`,
			want:    []string{"root-cert.pem", "binary DER", "openssl x509 -inform DER -in cert.der -out cert.pem"},
			fix:     `"$OPENSSL" x509 -inform DER -in cacerts/root-cert.pem -out c.tmp && mv c.tmp cacerts/root-cert.pem`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tempDir(t)
			script(t, dir, `cp -a "$BASE"/. .; `+tc.breakIt, "BASE="+base, "OPENSSL="+openssl)
			caDir := filepath.Join(dir, "cacerts")
			// Should it start after all, the timeout stops it.
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			var buf bytes.Buffer
			code := run(ctx, []string{"ca", "--dir", caDir, "--listen", "127.0.0.1:0"}, func(string) string { return "" }, &buf, &buf)
			out := buf.String()
			if code == 0 {
				t.Fatalf("sdsagent ca started on a %s:\n%s", tc.name, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("sdsagent ca output does not name %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "BEGIN") {
				t.Fatalf("output quotes a PEM file:\n%s", out)
			}
			script(t, dir, tc.fix, "OPENSSL="+openssl)
			servedByPluggedCA(t, caDir, filepath.Join(dir, "root-cert.pem"))
		})
	}
}

// TestPKIToolsDocMatchesTests keeps docs/pki-tools.md showing the
// commands the tests above run.
func TestPKIToolsDocMatchesTests(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "pki-tools.md"))
	if err != nil {
		t.Fatal(err)
	}
	lines := []string{
		// What opensslGuideScript writes with NAME_CONSTRAINT=cluster.local.
		"nameConstraints = critical, permitted;URI:cluster.local, excluded;URI:.cluster.local",
	}
	for _, s := range []string{easyRSAScript, opensslGuideScript} {
		for _, l := range strings.Split(s, "\n") {
			l = strings.TrimSpace(l)
			// The test's variations: key commands, the optional
			// constraint, and a smaller root key to save time.
			if l == "" || l == "fi" || strings.Contains(l, "GENKEY") || strings.Contains(l, "NAME_CONSTRAINT") ||
				strings.Contains(l, "genrsa -out root-key.pem") {
				continue
			}
			lines = append(lines, l)
		}
	}
	for _, l := range lines {
		if !bytes.Contains(doc, []byte(l)) {
			t.Errorf("docs/pki-tools.md lacks the tested line %q", l)
		}
	}
}
