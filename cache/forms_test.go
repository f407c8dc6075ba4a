package cache

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testtools"
)

// TestLoadKeyPairFormsOpenSSLWrites mounts a certificate and key that the
// real openssl wrote in forms an operator may have, as file-cert: does.
func TestLoadKeyPairFormsOpenSSLWrites(t *testing.T) {
	openssl := testtools.Need(t, "openssl", "apt-get install -y openssl")
	tests := []struct {
		name     string
		script   string // writes tls.crt and tls.key
		wantErr  error
		wantPath string // "tls.crt" or "tls.key"
		wantMsg  string
	}{
		{
			name:   "SEC 1 key after EC PARAMETERS",
			script: `"$OPENSSL" ecparam -genkey -name prime256v1 -out tls.key`,
		},
		{
			name:   "PKCS#1 key",
			script: `"$OPENSSL" genrsa -traditional -out tls.key 2048`,
		},
		{
			name: "encrypted key",
			script: `"$OPENSSL" ecparam -genkey -noout -name prime256v1 -out plain.key
"$OPENSSL" pkey -in plain.key -aes256 -passout pass:test -out tls.key`,
			wantErr: pki.ErrEncryptedKey, wantPath: "tls.key", wantMsg: "openssl pkey -in key.pem -out key-plain.pem",
		},
		{
			name: "DER certificate",
			script: `"$OPENSSL" ecparam -genkey -noout -name prime256v1 -out tls.key
"$OPENSSL" req -x509 -new -key tls.key -subj /CN=web -days 1 -outform DER -out tls.crt`,
			wantErr: pki.ErrDER, wantPath: "tls.crt", wantMsg: "openssl x509 -inform DER -in cert.der -out cert.pem",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			// A self-signed leaf for the key unless the case wrote one.
			cmd := exec.CommandContext(ctx, "sh", "-ec", tt.script+`
[ -e tls.crt ] || "$OPENSSL" req -x509 -new -key tls.key -passin pass:test -subj /CN=web -days 1 -out tls.crt`)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "OPENSSL="+openssl)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("openssl: %v\n%s", err, out)
			}
			certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
			sec, _, err := loadKeyPair("file-cert:x", certPath, keyPath, time.Now())
			if tt.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				if want, _ := os.ReadFile(keyPath); string(sec.PrivateKeyPEM) != string(want) {
					t.Fatal("served key is not the mounted key")
				}
				return
			}
			var fe *FileError
			if !errors.As(err, &fe) || !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want a *FileError for %v", err, tt.wantErr)
			}
			if fe.Path != filepath.Join(dir, tt.wantPath) || fe.Reason != FileMalformed ||
				!strings.Contains(err.Error(), tt.wantMsg) || !strings.Contains(fe.Hint(), "openssl command the error names") {
				t.Fatalf("refused %s (%s): %v, hint %q; want %s naming %q", fe.Path, fe.Reason, err, fe.Hint(), tt.wantPath, tt.wantMsg)
			}
		})
	}
}
