package devca

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/atomicfile"
	"github.com/sdsagent/sdsagent/internal/pki"
)

// tokenBytes is the entropy of a generated bearer token: 256 bits.
const tokenBytes = 32

// state is what the CA keeps on disk.
type state struct {
	signer  *signer
	rootPEM []byte
	token   []byte
}

// loadOrCreateState creates dir if needed. When dir holds Istio's
// plugged-in CA files (ca-cert.pem or cert-chain.pem), it loads them as an
// intermediate CA. Otherwise it creates the root, key and token if none of
// them exists, and loads and checks them. Some but not all of them existing
// is an error: they are never overwritten.
func loadOrCreateState(dir, trustDomain string, now time.Time, log *zap.Logger) (*state, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	plugged, _, err := presence(dir, caCertFile, certChainFile)
	if err != nil {
		return nil, err
	}
	if len(plugged) > 0 {
		st, err := loadPluggedState(dir, trustDomain, now, log)
		if err != nil {
			return nil, fmt.Errorf("load plugged-in CA from %s: %w", dir, err)
		}
		return st, nil
	}
	present, missing, err := presence(dir, rootCertFile, caKeyFile, tokenFile)
	if err != nil {
		return nil, err
	}
	switch {
	case len(present) == 0:
		if err := createState(dir, trustDomain, now); err != nil {
			return nil, fmt.Errorf("create state in %s: %w", dir, err)
		}
		log.Info("state created", zap.String("dir", dir))
	case len(missing) > 0:
		return nil, fmt.Errorf("incomplete state in %s: missing %s (found %s); restore the missing files, or remove the others to create a new CA",
			dir, strings.Join(missing, ", "), strings.Join(present, ", "))
	}
	st, err := loadState(dir, trustDomain, now, log)
	if err != nil {
		return nil, fmt.Errorf("load state from %s: %w", dir, err)
	}
	return st, nil
}

// createState writes a new root, its key and a token into dir. The root is
// written last, so it only exists once its key does.
func createState(dir, trustDomain string, now time.Time) error {
	root, key, err := newRoot(trustDomain, now)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal root key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	token, err := newToken()
	if err != nil {
		return err
	}

	if err := atomicfile.WriteFile(dir, caKeyFile, keyPEM, 0o600); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(dir, tokenFile, token, 0o600); err != nil {
		return err
	}
	return atomicfile.WriteFile(dir, rootCertFile, encodeCertPEM(root.Raw), 0o644)
}

// loadState reads and checks the three state files. Each error names the
// file it is about.
func loadState(dir, trustDomain string, now time.Time, log *zap.Logger) (*state, error) {
	rootPEM, err := os.ReadFile(filepath.Join(dir, rootCertFile))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rootCertFile, err)
	}
	root, err := pki.ParseCertificate(rootPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rootCertFile, err)
	}
	if now.Before(root.NotBefore) || now.After(root.NotAfter) {
		return nil, fmt.Errorf("%s: %w; remove the state files to create a new CA", rootCertFile,
			&notValidError{notBefore: root.NotBefore, notAfter: root.NotAfter, now: now})
	}

	keyPath := filepath.Join(dir, caKeyFile)
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", caKeyFile, err)
	}
	key, err := pki.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", caKeyFile, err)
	}
	if err := keyMatchesCert(key, root); err != nil {
		return nil, fmt.Errorf("%s: %w in %s", caKeyFile, err, rootCertFile)
	}
	sg, err := newSigner(key, []*x509.Certificate{root})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rootCertFile, err)
	}

	token, err := loadToken(dir)
	if err != nil {
		return nil, err
	}
	warnSecretModes(dir, log)
	if org := root.Subject.Organization; len(org) != 1 || org[0] != trustDomain {
		log.Warn("root organization differs from trust domain",
			zap.Strings("root_organization", org), zap.String("trust_domain", trustDomain))
	}
	log.Info("state loaded",
		zap.String("dir", dir),
		zap.String("mode", string(ModeSelfSignedRoot)),
		zap.String("root_subject", root.Subject.String()),
		zap.String("root_serial", root.SerialNumber.Text(16)),
		zap.Time("root_not_after", root.NotAfter))
	return &state{signer: sg, rootPEM: rootPEM, token: token}, nil
}

// presence sorts names into those that exist in dir and those that do not.
func presence(dir string, names ...string) (present, missing []string, err error) {
	for _, name := range names {
		_, err := os.Lstat(filepath.Join(dir, name))
		switch {
		case err == nil:
			present = append(present, name)
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, name)
		default:
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	return present, missing, nil
}

// newToken returns a random hex-encoded bearer token.
func newToken() ([]byte, error) {
	raw := make([]byte, tokenBytes)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("generate token: %w", err)
	}
	return []byte(hex.EncodeToString(raw)), nil
}

// loadToken reads and checks dir/token.
func loadToken(dir string) ([]byte, error) {
	token, err := os.ReadFile(filepath.Join(dir, tokenFile))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", tokenFile, err)
	}
	token = bytes.TrimSpace(token)
	if err := validateToken(token); err != nil {
		return nil, fmt.Errorf("%s: %w", tokenFile, err)
	}
	return token, nil
}

// warnSecretModes warns about a CA key or token that others than the
// owner may read.
func warnSecretModes(dir string, log *zap.Logger) {
	for _, name := range []string{caKeyFile, tokenFile} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err == nil && fi.Mode().Perm()&0o077 != 0 {
			log.Warn("secret file is accessible by group or others",
				zap.String("path", filepath.Join(dir, name)), zap.Stringer("mode", fi.Mode().Perm()))
		}
	}
}

// validateToken checks that a token can travel in an HTTP header value.
func validateToken(token []byte) error {
	if len(token) == 0 {
		return errors.New("token is empty")
	}
	for _, c := range token {
		if c <= ' ' || c >= 0x7f {
			return errors.New("token holds whitespace or non-printable characters")
		}
	}
	return nil
}
