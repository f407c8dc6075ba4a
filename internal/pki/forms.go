package pki

import (
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// The forms below are what OpenSSL, Easy-RSA and CFSSL write that the agent
// cannot take as they are. Each error names the form and the openssl
// command that converts it, and never quotes the data.

// ErrEncryptedKey is returned for a private key protected by a passphrase.
// The agent runs unattended and takes unencrypted keys only.
var ErrEncryptedKey = errors.New("the private key is encrypted")

// ErrDER is returned for binary (DER) input where PEM is expected.
var ErrDER = errors.New("the file is binary DER, not PEM")

// keyPEMConvertHint is the command that writes any key OpenSSL reads as
// an unencrypted PKCS#8 PEM key.
const keyPEMConvertHint = "openssl pkey -in key.pem -out key-plain.pem"

// looksDER reports whether data starts like a DER SEQUENCE and is binary,
// as a DER certificate, key or PKCS#12 file is, rather than text.
func looksDER(data []byte) bool {
	if len(data) < 2 || data[0] != 0x30 {
		return false
	}
	for _, b := range data {
		if b >= 0x80 || (b < 0x20 && b != '\n' && b != '\r' && b != '\t') {
			return true
		}
	}
	return false
}

// keyNotPEMError explains key data in which no PEM block was found.
func keyNotPEMError(data []byte) error {
	if looksDER(data) {
		return fmt.Errorf("%w: convert the key with \"openssl pkey -inform DER -in key.der -out key.pem\" (a PKCS#12 .p12/.pfx bundle: \"openssl pkcs12 -in bundle.p12 -nocerts -nodes -out key.pem\")", ErrDER)
	}
	return errors.New("no PEM block found (want a PEM private key: PKCS#8 \"PRIVATE KEY\", PKCS#1 \"RSA PRIVATE KEY\" or SEC 1 \"EC PRIVATE KEY\")")
}

// certNotPEMError explains certificate data in which no PEM block was found.
func certNotPEMError(data []byte) error {
	if looksDER(data) {
		return fmt.Errorf("%w: convert the certificate with \"openssl x509 -inform DER -in cert.der -out cert.pem\" (a PKCS#7 .p7b chain: \"openssl pkcs7 -inform DER -print_certs -in chain.p7b -out chain.pem\")", ErrDER)
	}
	return errors.New("no valid PEM block (truncated or not PEM)")
}

// isEncryptedPEM reports whether block is a legacy OpenSSL encrypted PEM
// block ("Proc-Type: 4,ENCRYPTED" header, as "openssl genrsa -aes256
// -traditional" writes).
func isEncryptedPEM(block *pem.Block) bool {
	return strings.Contains(block.Headers["Proc-Type"], "ENCRYPTED")
}

// keyBlockError explains a PEM block in a key file that is not a key the
// agent takes, or returns nil.
func keyBlockError(block *pem.Block) error {
	switch {
	case block.Type == "ENCRYPTED PRIVATE KEY":
		return fmt.Errorf("%w (PKCS#8 \"ENCRYPTED PRIVATE KEY\"): decrypt it with %q, which asks for the passphrase, and protect the file by its mode instead",
			ErrEncryptedKey, keyPEMConvertHint)
	case isEncryptedPEM(block):
		return fmt.Errorf("%w (%q with a \"Proc-Type: 4,ENCRYPTED\" header): decrypt it with %q, which asks for the passphrase, and protect the file by its mode instead",
			ErrEncryptedKey, block.Type, keyPEMConvertHint)
	case block.Type == "CERTIFICATE" || block.Type == "TRUSTED CERTIFICATE":
		return fmt.Errorf("the file holds a %q block, not a private key: are the certificate and key files swapped?", block.Type)
	case strings.HasSuffix(block.Type, "PUBLIC KEY"):
		return fmt.Errorf("the file holds a %q block: the private key is needed", block.Type)
	}
	return nil
}

// certBlockError explains a PEM block in a certificate file that is not a
// certificate; n counts the certificates before it.
func certBlockError(block *pem.Block, n int) error {
	switch {
	case block.Type == "TRUSTED CERTIFICATE":
		return fmt.Errorf("block %d is OpenSSL's \"TRUSTED CERTIFICATE\" form: write it as a plain certificate with \"openssl x509 -in cert.pem -out cert-plain.pem\"", n+1)
	case block.Type == "PKCS7":
		return fmt.Errorf("block %d is a PKCS#7 bundle: list its certificates with \"openssl pkcs7 -print_certs -in chain.p7b -out chain.pem\"", n+1)
	case strings.HasSuffix(block.Type, "PRIVATE KEY"):
		return fmt.Errorf("block %d is a private key (%q), not a certificate: are the certificate and key files swapped?", n+1, block.Type)
	}
	return fmt.Errorf("block %d has type %q, want CERTIFICATE", n+1, block.Type)
}
