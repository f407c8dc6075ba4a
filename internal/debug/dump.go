package debug

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The agent writes and reads Envoy admin's SecretsConfigDump and
// ConfigDump (package envoy.admin.v3) in their protojson form without
// linking go-control-plane's admin/v3 package: that package imports the
// bootstrap, cluster, listener and route protos and every type they use,
// and registering their descriptors made up a third of the agent's start
// (issue 13). The types below hold the fields the agent uses; their JSON
// is what protojson writes for the admin protos (lowerCamel names, fields
// in field-number order), and their parser also takes the proto names, as
// protojson does. The tests parse the output strictly into the admin/v3
// protos.

// secretsDumpTypeURL is the type URL of envoy.admin.v3.SecretsConfigDump,
// the @type of its entry in a ConfigDump.
const secretsDumpTypeURL = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"

// SecretsDump is the part of Envoy admin's SecretsConfigDump that the agent
// serves on /debug/secrets and `sdsagent secrets` reads.
type SecretsDump struct {
	// DynamicActiveSecrets are the secrets being served.
	DynamicActiveSecrets []*DynamicSecret
	// DynamicWarmingSecrets are secrets asked for but not served yet.
	DynamicWarmingSecrets []*DynamicSecret
}

// DynamicSecret is SecretsConfigDump.DynamicSecret: one secret.
type DynamicSecret struct {
	// Name is the SDS resource name.
	Name string
	// VersionInfo is the version the agent serves it at.
	VersionInfo string
	// LastUpdated is when it last changed; nil if unknown.
	LastUpdated *timestamppb.Timestamp
	// Secret is the (redacted) envoy.extensions.transport_sockets.tls.v3.Secret.
	Secret *anypb.Any
	// ErrorState says why the served secret is not a good one; nil if it is.
	ErrorState *UpdateFailureState
}

// UpdateFailureState is admin's UpdateFailureState: what is wrong with a
// secret and when that was last seen.
type UpdateFailureState struct {
	// LastUpdateAttempt is when the failure was seen.
	LastUpdateAttempt *timestamppb.Timestamp
	// Details says what is wrong.
	Details string
}

// GetDynamicActiveSecrets returns d's active secrets; nil for a nil d.
func (d *SecretsDump) GetDynamicActiveSecrets() []*DynamicSecret {
	if d == nil {
		return nil
	}
	return d.DynamicActiveSecrets
}

// GetDynamicWarmingSecrets returns d's warming secrets; nil for a nil d.
func (d *SecretsDump) GetDynamicWarmingSecrets() []*DynamicSecret {
	if d == nil {
		return nil
	}
	return d.DynamicWarmingSecrets
}

// GetName returns s's name; "" for a nil s.
func (s *DynamicSecret) GetName() string {
	if s == nil {
		return ""
	}
	return s.Name
}

// GetSecret returns s's packed secret; nil for a nil s.
func (s *DynamicSecret) GetSecret() *anypb.Any {
	if s == nil {
		return nil
	}
	return s.Secret
}

// GetErrorState returns s's error state; nil for a nil s.
func (s *DynamicSecret) GetErrorState() *UpdateFailureState {
	if s == nil {
		return nil
	}
	return s.ErrorState
}

// GetDetails returns f's details; "" for a nil f.
func (f *UpdateFailureState) GetDetails() string {
	if f == nil {
		return ""
	}
	return f.Details
}

// The wire forms. Field order is the admin protos' field-number order, as
// protojson writes it; the snake_case fields only take input written with
// proto names and are always empty on output.
type (
	secretsDumpJSON struct {
		Type                       string               `json:"@type,omitempty"`
		DynamicActiveSecrets       []*dynamicSecretJSON `json:"dynamicActiveSecrets,omitempty"`
		DynamicWarmingSecrets      []*dynamicSecretJSON `json:"dynamicWarmingSecrets,omitempty"`
		DynamicActiveSecretsProto  []*dynamicSecretJSON `json:"dynamic_active_secrets,omitempty"`
		DynamicWarmingSecretsProto []*dynamicSecretJSON `json:"dynamic_warming_secrets,omitempty"`
	}
	dynamicSecretJSON struct {
		Name             string            `json:"name,omitempty"`
		VersionInfo      string            `json:"versionInfo,omitempty"`
		LastUpdated      json.RawMessage   `json:"lastUpdated,omitempty"`
		Secret           json.RawMessage   `json:"secret,omitempty"`
		ErrorState       *failureStateJSON `json:"errorState,omitempty"`
		VersionInfoProto string            `json:"version_info,omitempty"`
		LastUpdatedProto json.RawMessage   `json:"last_updated,omitempty"`
		ErrorStateProto  *failureStateJSON `json:"error_state,omitempty"`
	}
	failureStateJSON struct {
		LastUpdateAttempt      json.RawMessage `json:"lastUpdateAttempt,omitempty"`
		Details                string          `json:"details,omitempty"`
		LastUpdateAttemptProto json.RawMessage `json:"last_update_attempt,omitempty"`
	}
	configDumpJSON struct {
		Configs []*secretsDumpJSON `json:"configs"`
	}
)

// protoJSON renders a well-known or tls/v3 proto compactly; the caller
// indents the whole document.
func protoJSON(m proto.Message) (json.RawMessage, error) {
	if m == nil {
		return nil, nil
	}
	return protojson.MarshalOptions{Resolver: protoregistry.GlobalTypes}.Marshal(m)
}

func (d *SecretsDump) wire() (*secretsDumpJSON, error) {
	out := &secretsDumpJSON{}
	var err error
	if out.DynamicActiveSecrets, err = secretsWire(d.GetDynamicActiveSecrets()); err != nil {
		return nil, err
	}
	if out.DynamicWarmingSecrets, err = secretsWire(d.GetDynamicWarmingSecrets()); err != nil {
		return nil, err
	}
	return out, nil
}

func secretsWire(in []*DynamicSecret) ([]*dynamicSecretJSON, error) {
	var out []*dynamicSecretJSON
	for _, s := range in {
		w := &dynamicSecretJSON{Name: s.Name, VersionInfo: s.VersionInfo}
		var err error
		if s.LastUpdated != nil {
			if w.LastUpdated, err = protoJSON(s.LastUpdated); err != nil {
				return nil, fmt.Errorf("secret %q: last_updated: %w", s.Name, err)
			}
		}
		if s.Secret != nil {
			if w.Secret, err = protoJSON(s.Secret); err != nil {
				return nil, fmt.Errorf("secret %q: %w", s.Name, err)
			}
		}
		if f := s.ErrorState; f != nil {
			w.ErrorState = &failureStateJSON{Details: f.Details}
			if f.LastUpdateAttempt != nil {
				if w.ErrorState.LastUpdateAttempt, err = protoJSON(f.LastUpdateAttempt); err != nil {
					return nil, fmt.Errorf("secret %q: error_state: %w", s.Name, err)
				}
			}
		}
		out = append(out, w)
	}
	return out, nil
}

// indentJSON renders v indented by two spaces, as the debug views show
// protos (protojson's multiline form, as istioctl prints Envoy dumps),
// without HTML escaping, ending in a newline.
func indentJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// secretsJSON renders d as the body of /debug/secrets: a SecretsConfigDump.
func secretsJSON(d *SecretsDump) ([]byte, error) {
	w, err := d.wire()
	if err != nil {
		return nil, fmt.Errorf("debug: marshal secrets dump: %w", err)
	}
	return indentJSON(w)
}

// configDumpJSONOf renders d as the body of /debug/config_dump: a
// ConfigDump whose one config is the SecretsConfigDump.
func configDumpJSONOf(d *SecretsDump) ([]byte, error) {
	w, err := d.wire()
	if err != nil {
		return nil, fmt.Errorf("debug: marshal config dump: %w", err)
	}
	w.Type = secretsDumpTypeURL
	return indentJSON(&configDumpJSON{Configs: []*secretsDumpJSON{w}})
}

// parseProto reads a JSON value into m as protojson does, ignoring unknown
// fields; null or absent leaves m nil.
func parseProto[M proto.Message](raw json.RawMessage, m M) (M, error) {
	var zero M
	if len(raw) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return zero, nil
	}
	opts := protojson.UnmarshalOptions{DiscardUnknown: true, Resolver: protoregistry.GlobalTypes}
	if err := opts.Unmarshal(raw, m); err != nil {
		return zero, err
	}
	return m, nil
}

// fromWire converts parsed JSON secrets, taking lowerCamel or proto names.
func fromWire(camel, snake []*dynamicSecretJSON) ([]*DynamicSecret, error) {
	var out []*DynamicSecret
	for _, w := range append(camel, snake...) {
		if w == nil {
			continue
		}
		s := &DynamicSecret{Name: w.Name, VersionInfo: cmp.Or(w.VersionInfo, w.VersionInfoProto)}
		var err error
		if s.LastUpdated, err = parseProto(rawOr(w.LastUpdated, w.LastUpdatedProto), &timestamppb.Timestamp{}); err != nil {
			return nil, fmt.Errorf("secret %q: last_updated: %w", w.Name, err)
		}
		if s.Secret, err = parseProto(w.Secret, &anypb.Any{}); err != nil {
			return nil, fmt.Errorf("secret %q: %w", w.Name, err)
		}
		if f := cmp.Or(w.ErrorState, w.ErrorStateProto); f != nil {
			s.ErrorState = &UpdateFailureState{Details: f.Details}
			if s.ErrorState.LastUpdateAttempt, err = parseProto(rawOr(f.LastUpdateAttempt, f.LastUpdateAttemptProto), &timestamppb.Timestamp{}); err != nil {
				return nil, fmt.Errorf("secret %q: error_state: %w", w.Name, err)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

func rawOr(a, b json.RawMessage) json.RawMessage {
	if len(a) != 0 {
		return a
	}
	return b
}
