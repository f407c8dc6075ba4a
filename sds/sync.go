package sds

import (
	"context"
	"errors"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/cache"
)

// syncLoop applies the Source's snapshot to the secret cache after every
// notification until ctx is done.
func (s *Server) syncLoop(ctx context.Context, updates <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-updates:
			s.syncSecrets()
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
	set := map[string]*tlsv3.Secret{}
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
		set[name] = msg
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
	if err := s.cache.apply(set, del); err != nil {
		s.log.Error("secrets not applied", zap.Error(err))
		return
	}
	for name := range set {
		sec, _ := snap.Get(name)
		s.log.Info("secret updated", zap.String("resource", name), zap.Stringer("kind", sec.Kind),
			zap.Time("not_after", sec.NotAfter()), zap.String("source", sec.Source))
	}
	for _, name := range del {
		s.log.Info("secret removed", zap.String("resource", name))
	}
}

// secretProto converts sec to an Envoy Secret that passes ValidateAll.
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
		if len(sec.TrustedCAPEM) == 0 {
			return nil, errors.New("convert secret: empty trusted ca")
		}
		msg.Type = &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inlineBytes(sec.TrustedCAPEM),
		}}
	default:
		return nil, fmt.Errorf("convert secret: unsupported kind %d", int(sec.Kind))
	}
	if err := msg.ValidateAll(); err != nil {
		return nil, fmt.Errorf("convert secret: invalid envoy secret: %w", err)
	}
	return msg, nil
}

func inlineBytes(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}
