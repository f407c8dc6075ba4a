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

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sdsagent/sdsagent/internal/pki"
)

// errLeak is returned instead of a body that would contain a private key.
var errLeak = errors.New("private key found in output after redaction; response withheld")

// secretsDump returns snap as Envoy admin's SecretsConfigDump: one
// dynamic_active_secrets entry per secret in listing order, with
// private keys, passwords and other sensitive fields replaced by
// "[redacted]".
func (s *Server) secretsDump(snap []Secret) (*SecretsDump, error) {
	var versions map[string]string
	if s.cfg.Versions != nil {
		versions = s.cfg.Versions()
	}
	dump := &SecretsDump{}
	for i := range snap {
		sec := &snap[i]
		name := sec.Name
		msg, err := s.redactedProto(sec)
		if err != nil {
			return nil, fmt.Errorf("debug: secret %q: %w", name, err)
		}
		packed, err := anypb.New(msg)
		if err != nil {
			return nil, fmt.Errorf("debug: secret %q: pack: %w", name, err)
		}
		entry := &DynamicSecret{
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
func (s *Server) expiredState(sec *Secret) *UpdateFailureState {
	if !sec.Cert {
		return nil
	}
	now := s.cfg.Now()
	notAfter := sec.NotAfter
	if now.Round(0).Before(notAfter) {
		return nil
	}
	details := fmt.Sprintf("%s since %s", ExpiredPrefix, notAfter.UTC().Format(time.RFC3339))
	if sec.Workload {
		if err := s.cfg.Ready(); err != nil {
			details += ": " + err.Error()
		}
	}
	return &UpdateFailureState{Details: details, LastUpdateAttempt: timestamppb.New(now)}
}

// redactedProto converts sec with its Proto without ever handing it the
// key: Proto gets the redaction marker as key, and the result is redacted
// again in case Proto filled the key from elsewhere.
func (s *Server) redactedProto(sec *Secret) (*tlsv3.Secret, error) {
	msg, err := sec.Proto([]byte(pki.Redacted))
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

// checkNoKeys returns errLeak if body holds any private key of snap, raw
// or base64, or a PEM private key header.
func checkNoKeys(body []byte, snap []Secret) error {
	if bytes.Contains(body, []byte("PRIVATE KEY")) {
		return errLeak
	}
	for _, sec := range snap {
		key := sec.PrivateKey
		if len(key) == 0 {
			continue
		}
		if bytes.Contains(body, key) || bytes.Contains(body, []byte(base64.StdEncoding.EncodeToString(key))) {
			return fmt.Errorf("secret %q: %w", sec.Name, errLeak)
		}
	}
	return nil
}

func (s *Server) serveSecrets(w http.ResponseWriter, _ *http.Request) {
	snap := s.cfg.Secrets()
	dump, err := s.secretsDump(snap)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.writeDump(w, secretsJSON, dump, snap)
}

func (s *Server) serveConfigDump(w http.ResponseWriter, _ *http.Request) {
	snap := s.cfg.Secrets()
	dump, err := s.secretsDump(snap)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.writeDump(w, configDumpJSONOf, dump, snap)
}

// writeDump writes dump rendered by render unless that would reveal a key
// of snap.
func (s *Server) writeDump(w http.ResponseWriter, render func(*SecretsDump) ([]byte, error), dump *SecretsDump, snap []Secret) {
	body, err := render(dump)
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
// bytes: Proto never sees the key, and checkNoKeys names only resources.
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
	PeerCheck *PeerCheck `json:"peer_check,omitempty"`
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
