package devca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/atomicfile"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/pki"
)

// Files of the revocation state inside the CA's directory.
const (
	// revocationsFile records every revocation and the last CRL number.
	revocationsFile = "revocations.json"
	// crlFile is the CRL the CA publishes for agents (--crl-file).
	crlFile = "crl.pem"
	// crlLockFile serialises `ca revoke` and a running CA.
	crlLockFile = ".crl.lock"
)

const (
	// DefaultCRLValidity is how long a published CRL is valid
	// (NextUpdate - ThisUpdate); a running CA re-signs it at half that.
	DefaultCRLValidity = 24 * time.Hour
	// crlPollInterval bounds how long a running CA goes without reading
	// the revocation state again, so that it sees a CRL `ca revoke`
	// published and schedules its next re-signing from it.
	crlPollInterval = time.Minute
)

// revocationReasons returns the CRL reason codes of RFC 5280 section
// 5.3.1 that `ca revoke --reason` accepts, by their RFC names. A function,
// not a package variable: the agent binary links this package, and a map
// variable is built by package initialisation at every start.
func revocationReasons() map[string]int {
	return map[string]int{
		"unspecified":          0,
		"keyCompromise":        1,
		"cACompromise":         2,
		"affiliationChanged":   3,
		"superseded":           4,
		"cessationOfOperation": 5,
		"certificateHold":      6,
		"privilegeWithdrawn":   9,
	}
}

// RevocationReasons returns the reason names Revoke accepts, sorted.
func RevocationReasons() []string {
	reasons := revocationReasons()
	names := make([]string, 0, len(reasons))
	for n := range reasons {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// revocationState is revocations.json.
type revocationState struct {
	// CRLNumber is the number of the last CRL published; the next one
	// gets CRLNumber+1.
	CRLNumber int64          `json:"crl_number"`
	Revoked   []revokedEntry `json:"revoked"`
}

// revokedEntry is one revoked certificate.
type revokedEntry struct {
	Serial    string    `json:"serial"` // lowercase hex
	Reason    string    `json:"reason"`
	RevokedAt time.Time `json:"revoked_at"`
}

// RevokeConfig configures Revoke.
type RevokeConfig struct {
	// Dir is the CA's state directory, as for Config.Dir. It must hold a
	// CA already; Revoke never creates one.
	Dir string
	// Serial is the serial number of the certificate to revoke, in hex
	// (colons and a 0x prefix are allowed), as `openssl x509 -serial` and
	// `sdsagent secrets` print it.
	Serial string
	// Reason is one of RevocationReasons; default "unspecified".
	Reason string
	// CRLValidity is the lifetime of the published CRL; default
	// DefaultCRLValidity.
	CRLValidity time.Duration
	// Clock and Logger default to the real clock and a no-op logger.
	Clock  clock.Clock
	Logger *zap.Logger
}

// Revoke records the revocation of a certificate in cfg.Dir's revocation
// state, durably and atomically, and publishes a fresh DIR/crl.pem signed
// by the CA's signing key. Revoking a serial again keeps its first
// record and still publishes. It may run while the CA serves.
func Revoke(cfg RevokeConfig) (*x509.RevocationList, error) {
	if cfg.Dir == "" {
		return nil, errors.New("devca: revoke: dir is required")
	}
	serial, err := parseSerial(cfg.Serial)
	if err != nil {
		return nil, fmt.Errorf("devca: revoke: %w", err)
	}
	if cfg.Reason == "" {
		cfg.Reason = "unspecified"
	}
	if _, ok := revocationReasons()[cfg.Reason]; !ok {
		return nil, fmt.Errorf("devca: revoke: unknown reason %q; use one of %s", cfg.Reason, strings.Join(RevocationReasons(), ", "))
	}
	if cfg.CRLValidity < 0 {
		return nil, fmt.Errorf("devca: revoke: CRL validity %s is negative", cfg.CRLValidity)
	}
	if cfg.CRLValidity == 0 {
		cfg.CRLValidity = DefaultCRLValidity
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	log := cfg.Logger.Named("devca")
	key, cert, err := loadCRLSigner(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("devca: revoke: %w", err)
	}

	unlock, err := lockCRL(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("devca: revoke: %w", err)
	}
	defer unlock()
	st, err := readRevocations(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("devca: revoke: %w", err)
	}
	hexSerial := serial.Text(16)
	now := cfg.Clock.Now()
	if i := slices.IndexFunc(st.Revoked, func(e revokedEntry) bool { return e.Serial == hexSerial }); i >= 0 {
		log.Info("certificate already revoked; publishing the CRL again",
			zap.String("serial", hexSerial), zap.String("reason", st.Revoked[i].Reason), zap.Time("revoked_at", st.Revoked[i].RevokedAt))
	} else {
		st.Revoked = append(st.Revoked, revokedEntry{Serial: hexSerial, Reason: cfg.Reason, RevokedAt: now.UTC()})
		log.Info("certificate revoked", zap.String("serial", hexSerial), zap.String("reason", cfg.Reason))
	}
	crl, err := publishCRL(cfg.Dir, st, key, cert, now, cfg.CRLValidity, log)
	if err != nil {
		return nil, fmt.Errorf("devca: revoke: %w", err)
	}
	return crl, nil
}

// CRLPath returns the path of the CRL the CA publishes, DIR/crl.pem.
func (ca *CA) CRLPath() string { return filepath.Join(ca.dir, crlFile) }

// RunCRL keeps DIR/crl.pem published until ctx ends: at once when there
// is none, when it is not this CA's (another signing key), or when the
// revocation state moved past it; then again at half its validity, well
// before its NextUpdate. It reads the revocation state at least every
// minute, so a CRL `ca revoke` published moves the next re-signing. It
// returns nil when ctx ends; a failure to publish is logged and retried.
func (ca *CA) RunCRL(ctx context.Context) error {
	log := ca.log.Named("crl")
	if err := checkCRLSigner(ca.signer.chain[0]); err != nil {
		log.Warn("no crl published; revocation is unavailable", zap.Error(err))
		<-ctx.Done()
		return nil
	}
	for {
		next, err := ca.refreshCRL(log)
		now := ca.clock.Now()
		if err != nil {
			log.Error("crl not published; retrying", zap.Error(err), zap.Duration("retry_in", crlPollInterval),
				zap.String("hint", "check that the CA's directory is writable and its files are intact"))
			next = now.Add(crlPollInterval)
		}
		wait := min(next.Round(0).Sub(now.Round(0)), crlPollInterval)
		t := ca.clock.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
	}
}

// refreshCRL publishes a CRL if the published one is missing, foreign,
// behind the revocation state or due for re-signing, and returns when
// the next one is due.
func (ca *CA) refreshCRL(log *zap.Logger) (time.Time, error) {
	unlock, err := lockCRL(ca.dir)
	if err != nil {
		return time.Time{}, err
	}
	defer unlock()
	st, err := readRevocations(ca.dir)
	if err != nil {
		return time.Time{}, err
	}
	now := ca.clock.Now()
	key, cert := ca.signer.key, ca.signer.chain[0]
	cur, why := ca.currentCRL(st, cert)
	if why == "" {
		due := resignTime(cur)
		if now.Round(0).Before(due) {
			return due, nil
		}
		why = "half of its validity passed"
	}
	log.Info("publishing crl", zap.String("cause", why))
	crl, err := publishCRL(ca.dir, st, key, cert, now, ca.crlValidity, log)
	if err != nil {
		return time.Time{}, err
	}
	return resignTime(crl), nil
}

// currentCRL returns the published CRL, or why a new one is needed.
func (ca *CA) currentCRL(st *revocationState, cert *x509.Certificate) (*x509.RevocationList, string) {
	data, err := os.ReadFile(filepath.Join(ca.dir, crlFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "none published yet"
	}
	if err != nil {
		return nil, "unreadable: " + err.Error()
	}
	crls, err := pki.ParseCRLs(data)
	switch {
	case err != nil:
		return nil, "unparsable: " + err.Error()
	case len(crls) != 1:
		return nil, fmt.Sprintf("holds %d CRLs, want 1", len(crls))
	case crls[0].CheckSignatureFrom(cert) != nil:
		return nil, "not signed by this CA's signing certificate"
	case crls[0].Number == nil || crls[0].Number.Cmp(big.NewInt(st.CRLNumber)) != 0:
		return nil, "the revocation state has a newer CRL number"
	}
	return crls[0], ""
}

// resignTime is when a running CA re-signs crl: half way through its
// validity.
func resignTime(crl *x509.RevocationList) time.Time {
	return crl.ThisUpdate.Add(crl.NextUpdate.Sub(crl.ThisUpdate) / 2)
}

// publishCRL signs a CRL of st's revocations with the next CRL number,
// records the number in the state, then writes crl.pem; both atomically
// and durably, the state first so that a number is never used twice. The
// CRL lock is held.
func publishCRL(dir string, st *revocationState, key crypto.Signer, cert *x509.Certificate, now time.Time, validity time.Duration, log *zap.Logger) (*x509.RevocationList, error) {
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(st.CRLNumber + 1),
		ThisUpdate: now.Add(-clockSkew).UTC(),
		NextUpdate: now.Add(validity).UTC(),
	}
	for _, e := range st.Revoked {
		n, ok := new(big.Int).SetString(e.Serial, 16)
		if !ok {
			return nil, fmt.Errorf("%s: serial %q is not hex; fix or remove the entry", revocationsFile, e.Serial)
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber:   n,
			RevocationTime: e.RevokedAt,
			ReasonCode:     revocationReasons()[e.Reason],
		})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, cert, key)
	if err != nil {
		return nil, fmt.Errorf("sign crl: %w", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("parse signed crl: %w", err)
	}
	st.CRLNumber++
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", revocationsFile, err)
	}
	if err := atomicfile.WriteFile(dir, revocationsFile, append(data, '\n'), 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(dir, crlFile, pki.EncodeCRLs([]*x509.RevocationList{crl}), 0o644); err != nil {
		return nil, err
	}
	log.Info("crl published",
		zap.String("path", filepath.Join(dir, crlFile)),
		zap.Int64("crl_number", st.CRLNumber),
		zap.Int("revoked", len(st.Revoked)),
		zap.String("issuer", cert.Subject.String()),
		zap.Time("this_update", crl.ThisUpdate),
		zap.Time("next_update", crl.NextUpdate))
	return crl, nil
}

// readRevocations reads revocations.json; a missing file is no
// revocations and CRL number 0.
func readRevocations(dir string) (*revocationState, error) {
	data, err := os.ReadFile(filepath.Join(dir, revocationsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return &revocationState{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", revocationsFile, err)
	}
	var st revocationState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%s: %w; restore it from a backup (it is written atomically, so this is not a partial write)", revocationsFile, err)
	}
	if st.CRLNumber < 0 {
		return nil, fmt.Errorf("%s: negative crl_number %d", revocationsFile, st.CRLNumber)
	}
	return &st, nil
}

// loadCRLSigner returns the CA's signing key and certificate from dir:
// the plugged-in intermediate (ca-cert.pem) when there is one, otherwise
// the self-signed root, each with ca-key.pem.
func loadCRLSigner(dir string) (crypto.Signer, *x509.Certificate, error) {
	certName := rootCertFile
	if _, err := os.Stat(filepath.Join(dir, caCertFile)); err == nil {
		certName = caCertFile
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, certName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%s holds no CA (neither %s nor %s): check --dir, or start `sdsagent ca --dir %s` once to create one", dir, caCertFile, rootCertFile, dir)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certName, err)
	}
	certs, err := pki.ParseCertificates(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certName, err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", caKeyFile, err)
	}
	key, err := pki.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", caKeyFile, err)
	}
	if err := keyMatchesCert(key, certs[0]); err != nil {
		return nil, nil, fmt.Errorf("%s: %w in %s", caKeyFile, err, certName)
	}
	if err := checkCRLSigner(certs[0]); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certName, err)
	}
	return key, certs[0], nil
}

// checkCRLSigner refuses a signing certificate whose key usage does not
// allow signing CRLs: peers would reject its CRLs.
func checkCRLSigner(c *x509.Certificate) error {
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCRLSign == 0 {
		return fmt.Errorf("the signing certificate %s lacks the CRL sign key usage; re-issue it with keyUsage cRLSign (sdsagent ca init-intermediate does) to publish CRLs", certName(c))
	}
	return nil
}

// lockCRL takes an exclusive lock on dir's CRL lock file, waiting for
// another holder, and returns its release.
func lockCRL(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, crlLockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open crl lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		_ = f.Close() // the lock error is the one to report
		return nil, fmt.Errorf("lock crl: %w", err)
	}
	return func() { _ = f.Close() }, nil // closing releases the lock
}

// parseSerial parses a hex serial number: colons and a 0x prefix are
// allowed, as OpenSSL and others print them.
func parseSerial(s string) (*big.Int, error) {
	h := strings.TrimPrefix(strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "serial="), "0x")
	h = strings.ReplaceAll(h, ":", "")
	if h == "" {
		return nil, errors.New("serial is required: the hex serial number of the certificate to revoke, as `sdsagent secrets` or `openssl x509 -noout -serial` prints it")
	}
	n, ok := new(big.Int).SetString(h, 16)
	if !ok || n.Sign() <= 0 {
		return nil, fmt.Errorf("serial %q is not a positive hex number (e.g. 2629b05718e9bc5e8305a1fbcc2822d3)", s)
	}
	return n, nil
}
