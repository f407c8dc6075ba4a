package sds

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
)

// syncLoop applies the Source's snapshot to the secret cache after every
// notification until ctx is done.
// It also writes the summaries of suppressed log lines, summaryEvery
// after lines start being suppressed, if no line carried them before; no
// timer runs while nothing is suppressed.
func (s *Server) syncLoop(ctx context.Context, updates <-chan struct{}) {
	var summary clock.Timer
	var summaryC <-chan time.Time
	defer func() {
		if summary != nil {
			summary.Stop()
		}
	}()
	arm := func() {
		if summary == nil {
			summary = s.cfg.Clock.NewTimer(summaryEvery)
			summaryC = summary.C()
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-updates:
			s.syncSecrets()
		case <-s.warn.Pending():
			arm()
		case <-s.debug.Pending():
			arm()
		case <-summaryC:
			summary, summaryC = nil, nil
			s.warn.Flush()
			s.debug.Flush()
		}
	}
}

// syncSecrets diffs the current snapshot against what was last applied,
// by pointer (published secrets are immutable, unchanged ones keep their
// pointer), and applies only the changes, so that a push goes out only when
// content changed. A secret that cannot be turned into a valid Envoy
// resource is logged and skipped; the one served before stays.
func (s *Server) syncSecrets() {
	snap := s.cfg.Source.Snapshot()
	var set []update
	for _, name := range snap.Names() {
		sec, _ := snap.Get(name)
		if prev, ok := s.seen[name]; ok && prev == sec {
			continue
		}
		s.seen[name] = sec
		msg, err := ToProto(sec)
		if err != nil {
			s.log.Error("secret rejected, keeping the previous one",
				zap.String("resource", name), zap.Stringer("kind", sec.Kind), zap.Error(err))
			continue
		}
		set = append(set, update{secret: msg, expires: expiresAt(sec)})
	}
	var del []string
	for name := range s.seen {
		if _, ok := snap.Get(name); !ok {
			delete(s.seen, name)
			del = append(del, name)
		}
	}
	if len(set) == 0 && len(del) == 0 {
		return
	}
	if err := s.table.apply(set, del); err != nil {
		s.log.Error("secrets not applied", zap.Error(err))
		return
	}
	changed := slices.Clone(del)
	for _, u := range set {
		changed = append(changed, u.secret.GetName())
	}
	s.pushChanged(changed)
	for _, u := range set {
		name := u.secret.GetName()
		sec, _ := snap.Get(name)
		s.log.Info("secret updated", zap.String("resource", name), zap.Stringer("kind", sec.Kind),
			zap.Time("not_after", sec.NotAfter()), zap.String("source", sec.Source))
	}
	for _, name := range del {
		s.log.Info("secret removed", zap.String("resource", name))
	}
}

// expiresAt returns when sec stops being sent to streams that do not hold
// it yet: the workload certificate's NotAfter. An expired workload
// certificate makes every handshake fail, so a new stream or fetch is
// held as before the first certificate until a valid one is published.
// Other names do not expire here; zero means never.
func expiresAt(sec *cache.Secret) time.Time {
	if sec.Name != cache.WorkloadCertName || sec.Kind != cache.TLSCertificate {
		return time.Time{}
	}
	return sec.NotAfter()
}

// SPIFFEValidatorName is the name of Envoy's SPIFFE certificate validator
// extension, under which a ValidationContext with trust bundles is served.
const SPIFFEValidatorName = "envoy.tls.cert_validator.spiffe"

// ToProto converts sec to an Envoy Secret that passes ValidateAll. A
// ValidationContext with Bundles becomes a custom_validator_config for
// Envoy's SPIFFE certificate validator (a SPIFFECertValidatorConfig with
// one trust domain per bundle, itself validated), otherwise trusted_ca.
// Errors never contain key bytes.
func ToProto(sec *cache.Secret) (*tlsv3.Secret, error) {
	if sec.Name == "" {
		return nil, errors.New("convert secret: empty name")
	}
	msg := &tlsv3.Secret{Name: sec.Name}
	switch sec.Kind {
	case cache.TLSCertificate:
		if len(sec.CertChainPEM) == 0 {
			return nil, errors.New("convert secret: empty certificate chain")
		}
		if len(sec.PrivateKeyPEM) == 0 {
			return nil, errors.New("convert secret: empty private key")
		}
		msg.Type = &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inlineBytes(sec.CertChainPEM),
			PrivateKey:       inlineBytes(sec.PrivateKeyPEM),
		}}
	case cache.ValidationContext:
		if len(sec.Bundles) > 0 {
			vc, err := spiffeValidationContext(sec.Bundles)
			if err != nil {
				return nil, err
			}
			msg.Type = &tlsv3.Secret_ValidationContext{ValidationContext: vc}
			break
		}
		if len(sec.TrustedCAPEM) == 0 {
			return nil, errors.New("convert secret: empty trusted ca")
		}
		vc := &tlsv3.CertificateValidationContext{TrustedCa: inlineBytes(sec.TrustedCAPEM)}
		if len(sec.CRLPEM) > 0 {
			vc.Crl = inlineBytes(sec.CRLPEM)
			vc.OnlyVerifyLeafCertCrl = sec.OnlyVerifyLeafCRL
		}
		msg.Type = &tlsv3.Secret_ValidationContext{ValidationContext: vc}
	default:
		return nil, fmt.Errorf("convert secret: unsupported kind %d", int(sec.Kind))
	}
	if err := msg.ValidateAll(); err != nil {
		return nil, fmt.Errorf("convert secret: invalid envoy secret: %w", err)
	}
	return msg, nil
}

// spiffeValidationContext returns a ValidationContext that hands bundles
// to Envoy's SPIFFE certificate validator, one trust domain each, in
// order. trusted_ca stays empty: the validator picks a peer's roots by
// the trust domain of its SPIFFE ID, so no trust domain can vouch for
// another.
func spiffeValidationContext(bundles []cache.TrustBundle) (*tlsv3.CertificateValidationContext, error) {
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	for _, b := range bundles {
		if len(b.RootsPEM) == 0 {
			return nil, fmt.Errorf("convert secret: trust domain %q: empty trust bundle", b.TrustDomain)
		}
		// The SPIFFE validator ignores the crl field; it takes CRLs
		// from the bundle's PEM.
		bundle := b.RootsPEM
		if len(b.CRLPEM) > 0 {
			bundle = append(append([]byte(nil), b.RootsPEM...), b.CRLPEM...)
		}
		cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
			Name:        b.TrustDomain,
			TrustBundle: inlineBytes(bundle),
		})
	}
	if err := cfg.ValidateAll(); err != nil {
		return nil, fmt.Errorf("convert secret: invalid spiffe validator config: %w", err)
	}
	typed, err := anypb.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("convert secret: pack spiffe validator config: %w", err)
	}
	return &tlsv3.CertificateValidationContext{
		CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: SPIFFEValidatorName, TypedConfig: typed},
	}, nil
}

func inlineBytes(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}
