package debug

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/peercred"
	"github.com/sdsagent/sdsagent/internal/pki"
)

// errLeak is returned instead of a body that would contain a private key.
var errLeak = errors.New("private key found in output after redaction; response withheld")

// secretsDump returns snap as Envoy admin's SecretsConfigDump: one
// dynamic_active_secrets entry per name in cache.SortNames order, with
// private keys, passwords and other sensitive fields replaced by
// "[redacted]".
func (s *Server) secretsDump(snap *cache.Snapshot) (*adminv3.SecretsConfigDump, error) {
	var versions map[string]string
	if s.cfg.Versions != nil {
		versions = s.cfg.Versions()
	}
	dump := &adminv3.SecretsConfigDump{}
	for _, name := range snap.Names() {
		sec, ok := snap.Get(name)
		if !ok {
			continue
		}
		msg, err := s.redactedProto(sec)
		if err != nil {
			return nil, fmt.Errorf("debug: secret %q: %w", name, err)
		}
		packed, err := anypb.New(msg)
		if err != nil {
			return nil, fmt.Errorf("debug: secret %q: pack: %w", name, err)
		}
		entry := &adminv3.SecretsConfigDump_DynamicSecret{
			Name:        name,
			VersionInfo: versions[name],
			Secret:      packed,
		}
		if !sec.UpdatedAt.IsZero() {
			entry.LastUpdated = timestamppb.New(sec.UpdatedAt)
		}
		entry.ErrorState = s.expiredState(sec)
		dump.DynamicActiveSecrets = append(dump.DynamicActiveSecrets, entry)
	}
	return dump, nil
}

// ExpiredPrefix starts the error_state details of a TLS certificate past
// its NotAfter in /debug/secrets; `sdsagent secrets` then shows the
// status EXPIRED.
const ExpiredPrefix = "EXPIRED"

// expiredState returns the error_state of a TLS certificate past its
// NotAfter: since when and, for the workload certificate, why it was not
// renewed (the readiness error). Nil for anything else.
func (s *Server) expiredState(sec *cache.Secret) *adminv3.UpdateFailureState {
	if sec.Kind != cache.TLSCertificate || len(sec.Certs) == 0 {
		return nil
	}
	now := s.cfg.Now()
	notAfter := sec.NotAfter()
	if now.Round(0).Before(notAfter) {
		return nil
	}
	details := fmt.Sprintf("%s since %s", ExpiredPrefix, notAfter.UTC().Format(time.RFC3339))
	if sec.Name == cache.WorkloadCertName {
		if err := s.cfg.Ready(); err != nil {
			details += ": " + err.Error()
		}
	}
	return &adminv3.UpdateFailureState{Details: details, LastUpdateAttempt: timestamppb.New(now)}
}

// redactedProto converts sec with ToProto without ever handing it the
// key: ToProto sees a copy whose key is the redaction marker, and the
// result is redacted again in case ToProto filled the key from elsewhere.
func (s *Server) redactedProto(sec *cache.Secret) (*tlsv3.Secret, error) {
	cp := *sec
	if len(cp.PrivateKeyPEM) > 0 {
		cp.PrivateKeyPEM = pki.PrivateKeyPEM(pki.Redacted)
	}
	msg, err := s.cfg.ToProto(&cp)
	if err != nil {
		return nil, err
	}
	if msg == nil {
		return nil, errors.New("convert: nil secret")
	}
	msg = proto.CloneOf(msg) // the caller may share it with the SDS cache
	redact(msg)
	return msg, nil
}

// redact replaces every sensitive field of msg (those Envoy's proto marks
// sensitive) with the marker Envoy admin uses: inline_string "[redacted]".
func redact(msg *tlsv3.Secret) {
	marker := func(ds *corev3.DataSource) *corev3.DataSource {
		if ds == nil {
			return nil
		}
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: pki.Redacted}}
	}
	switch t := msg.GetType().(type) {
	case *tlsv3.Secret_TlsCertificate:
		c := t.TlsCertificate
		c.PrivateKey = marker(c.PrivateKey)
		c.Password = marker(c.Password)
		c.Pkcs12 = marker(c.Pkcs12)
		if c.PrivateKeyProvider != nil {
			// Its typed config may hold key material; keep only the name.
			c.PrivateKeyProvider = &tlsv3.PrivateKeyProvider{ProviderName: c.PrivateKeyProvider.GetProviderName()}
		}
	case *tlsv3.Secret_SessionTicketKeys:
		for i, k := range t.SessionTicketKeys.GetKeys() {
			t.SessionTicketKeys.Keys[i] = marker(k)
		}
	case *tlsv3.Secret_GenericSecret:
		t.GenericSecret.Secret = marker(t.GenericSecret.Secret)
		for k, v := range t.GenericSecret.Secrets {
			t.GenericSecret.Secrets[k] = marker(v)
		}
	}
}

// marshalJSON renders m as the debug views show protos: protojson with
// lowerCamel names (as istioctl prints Envoy dumps), indented.
func marshalJSON(m proto.Message) ([]byte, error) {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", Resolver: protoregistry.GlobalTypes}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("debug: marshal %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return append(b, '\n'), nil
}

// checkNoKeys returns errLeak if body holds any private key of snap, raw
// or base64, or a PEM private key header.
func checkNoKeys(body []byte, snap *cache.Snapshot) error {
	if bytes.Contains(body, []byte("PRIVATE KEY")) {
		return errLeak
	}
	for _, name := range snap.Names() {
		sec, _ := snap.Get(name)
		key := []byte(sec.PrivateKeyPEM)
		if len(key) == 0 {
			continue
		}
		if bytes.Contains(body, key) || bytes.Contains(body, []byte(base64.StdEncoding.EncodeToString(key))) {
			return fmt.Errorf("secret %q: %w", name, errLeak)
		}
	}
	return nil
}

func (s *Server) serveSecrets(w http.ResponseWriter, _ *http.Request) {
	snap := s.cfg.Secrets.Snapshot()
	dump, err := s.secretsDump(snap)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.writeProto(w, dump, snap)
}

func (s *Server) serveConfigDump(w http.ResponseWriter, _ *http.Request) {
	snap := s.cfg.Secrets.Snapshot()
	dump, err := s.secretsDump(snap)
	if err != nil {
		s.fail(w, err)
		return
	}
	packed, err := anypb.New(dump)
	if err != nil {
		s.fail(w, fmt.Errorf("debug: pack secrets dump: %w", err))
		return
	}
	s.writeProto(w, &adminv3.ConfigDump{Configs: []*anypb.Any{packed}}, snap)
}

// writeProto writes m as JSON unless it would reveal a key of snap.
func (s *Server) writeProto(w http.ResponseWriter, m proto.Message, snap *cache.Snapshot) {
	body, err := marshalJSON(m)
	if err == nil {
		err = checkNoKeys(body, snap)
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// fail logs err and answers 500 with it. Errors here never hold key
// bytes: ToProto never sees the key, and checkNoKeys names only resources.
func (s *Server) fail(w http.ResponseWriter, err error) {
	s.log.Error("debug view failed", zap.Error(err))
	http.Error(w, err.Error(), http.StatusInternalServerError)
}

// sdsView is the body of /debug/sds.
type sdsView struct {
	// Streams are the open streams sorted by ID.
	Streams []StreamInfo `json:"streams"`
	// UnknownNames is the sorted union of the streams' unknown names.
	UnknownNames []string `json:"unknown_names"`
	// Versions is the version of each served resource; a stream whose
	// acked_version is at least that has received it.
	Versions map[string]string `json:"versions"`
	// NameErrors says, per wanted name that cannot be served now, why:
	// a malformed name, a missing or refused file.
	NameErrors map[string]string `json:"name_errors"`
	// PeerCheck is the socket's uid/gid allowlist and its refusals;
	// absent when the check is off.
	PeerCheck *peercred.Stats `json:"peer_check,omitempty"`
}

func (s *Server) sdsState() sdsView {
	streams := slices.Clone(s.cfg.Streams())
	slices.SortFunc(streams, func(a, b StreamInfo) int { return cmp.Compare(a.ID, b.ID) })
	view := sdsView{Streams: make([]StreamInfo, 0, len(streams)), UnknownNames: []string{}, Versions: map[string]string{}, NameErrors: map[string]string{}}
	for _, st := range streams {
		st.Names = nonNil(st.Names)
		st.UnknownNames = nonNil(st.UnknownNames)
		view.UnknownNames = append(view.UnknownNames, st.UnknownNames...)
		view.Streams = append(view.Streams, st)
	}
	slices.Sort(view.UnknownNames)
	view.UnknownNames = slices.Compact(view.UnknownNames)
	if s.cfg.Versions != nil {
		for name, v := range s.cfg.Versions() {
			view.Versions[name] = v
		}
	}
	if s.cfg.NameErrors != nil {
		for name, e := range s.cfg.NameErrors() {
			view.NameErrors[name] = e
		}
	}
	if s.cfg.PeerCheck != nil {
		pc := s.cfg.PeerCheck()
		view.PeerCheck = &pc
	}
	return view
}

func (s *Server) serveSDS(w http.ResponseWriter, _ *http.Request) {
	body, err := json.MarshalIndent(s.sdsState(), "", "  ")
	if err != nil {
		s.fail(w, fmt.Errorf("debug: marshal sds view: %w", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(body, '\n'))
}

// nonNil returns ss, or an empty slice for nil, so JSON shows [] not null.
func nonNil(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return slices.Clone(ss)
}
