// Package pki generates workload keys and CSRs, encodes and decodes PEM,
// and verifies what a CA returned before anything is served. It does no
// network I/O and keeps no timers.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"
)

// KeyType names a key algorithm and size.
type KeyType string

// Supported key types. ECDSA P-256 is the default: it is what Istio uses
// for ECC and costs about 0.2 ms to generate, against tens of ms for RSA.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	RSA2048   KeyType = "rsa-2048"
	RSA3072   KeyType = "rsa-3072"
	RSA4096   KeyType = "rsa-4096"
)

// KeyTypes lists every supported key type, default first.
var KeyTypes = []KeyType{ECDSAP256, ECDSAP384, RSA2048, RSA3072, RSA4096}

// ParseKeyType parses a --key-type value such as "ecdsa-p256" or "rsa-2048".
// It accepts upper case and "_" in place of "-".
func ParseKeyType(s string) (KeyType, error) {
	norm := KeyType(strings.ReplaceAll(strings.ToLower(strings.TrimSpace(s)), "_", "-"))
	for _, kt := range KeyTypes {
		if kt == norm {
			return kt, nil
		}
	}
	return "", fmt.Errorf("unknown key type %q: want one of %s", s, strings.Join(keyTypeNames(), ", "))
}

// KeyTypeFromIstio maps Istio's settings to a key type: ECC_SIGNATURE_ALGORITHM
// ("" or "ECDSA"; empty means RSA as in Istio), ECC_CURVE ("P256", "P384") and
// WORKLOAD_RSA_KEY_SIZE (2048, 3072, 4096).
func KeyTypeFromIstio(sigAlg, curve string, rsaBits int) (KeyType, error) {
	switch strings.ToUpper(strings.TrimSpace(sigAlg)) {
	case "ECDSA":
		switch strings.ToUpper(strings.TrimSpace(curve)) {
		case "", "P256", "P-256":
			return ECDSAP256, nil
		case "P384", "P-384":
			return ECDSAP384, nil
		default:
			return "", fmt.Errorf("unsupported ECC_CURVE %q: want P256 or P384", curve)
		}
	case "":
		switch rsaBits {
		case 0, 2048:
			return RSA2048, nil
		case 3072:
			return RSA3072, nil
		case 4096:
			return RSA4096, nil
		default:
			return "", fmt.Errorf("unsupported WORKLOAD_RSA_KEY_SIZE %d: want 2048, 3072 or 4096", rsaBits)
		}
	default:
		return "", fmt.Errorf("unsupported ECC_SIGNATURE_ALGORITHM %q: want ECDSA", sigAlg)
	}
}

func keyTypeNames() []string {
	names := make([]string, len(KeyTypes))
	for i, kt := range KeyTypes {
		names[i] = string(kt)
	}
	return names
}

// GenerateKey returns a new private key of type kt.
func GenerateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	default:
		return nil, fmt.Errorf("generate key: unknown key type %q", kt)
	}
}

// PrivateKeyPEM is a PEM-encoded private key. Its String, Format and JSON
// forms are redacted so a key cannot leak through logs or debug output by
// accident; use the bytes themselves only where the key must go.
type PrivateKeyPEM []byte

// Redacted is what a PrivateKeyPEM prints as.
const Redacted = "[redacted]"

// String returns Redacted.
func (PrivateKeyPEM) String() string { return Redacted }

// GoString returns Redacted.
func (PrivateKeyPEM) GoString() string { return Redacted }

// Format prints Redacted for every verb, including %x and %v.
func (PrivateKeyPEM) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(Redacted)) }

// MarshalJSON returns Redacted as a JSON string.
func (PrivateKeyPEM) MarshalJSON() ([]byte, error) { return []byte(`"` + Redacted + `"`), nil }

// MarshalText returns Redacted.
func (PrivateKeyPEM) MarshalText() ([]byte, error) { return []byte(Redacted), nil }

// EncodePrivateKey returns key as a PKCS#8 "PRIVATE KEY" PEM block, which
// Envoy, Go and OpenSSL all read.
func EncodePrivateKey(key crypto.Signer) (PrivateKeyPEM, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKey reads one PEM private key in PKCS#8, PKCS#1 ("RSA PRIVATE
// KEY") or SEC 1 ("EC PRIVATE KEY") form; an "EC PARAMETERS" block before a
// SEC 1 key, as "openssl ecparam -genkey" writes it, is skipped. An
// encrypted key (ErrEncryptedKey) or DER input (ErrDER) is refused with the
// openssl command that converts it. Errors never include key bytes.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	block, rest := pem.Decode(data)
	if block != nil && block.Type == "EC PARAMETERS" {
		block, rest = pem.Decode(rest)
	}
	if block == nil {
		return nil, fmt.Errorf("parse private key: %w", keyNotPEMError(data))
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		return nil, fmt.Errorf("parse private key: unexpected data after the %q block", block.Type)
	}
	if err := keyBlockError(block); err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("parse private key: unexpected PEM block type %q", block.Type)
	}
	if err != nil {
		// The x509 errors describe structure, not key material.
		return nil, fmt.Errorf("parse private key: %q block: %w", block.Type, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("parse private key: unsupported key type %T", key)
	}
	return signer, nil
}
