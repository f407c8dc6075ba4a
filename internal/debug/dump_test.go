package debug

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// asAdmin renders d as /debug/secrets does and parses it strictly (no
// unknown field allowed) into Envoy admin's SecretsConfigDump.
func asAdmin(t *testing.T, d *SecretsDump) *adminv3.SecretsConfigDump {
	t.Helper()
	body, err := secretsJSON(d)
	if err != nil {
		t.Fatal(err)
	}
	out := &adminv3.SecretsConfigDump{}
	if err := protojson.Unmarshal(body, out); err != nil {
		t.Fatalf("/debug/secrets body is not a SecretsConfigDump: %v\n%s", err, body)
	}
	return out
}

// sameDump says whether a and b are the same SecretsConfigDump.
func sameDump(t *testing.T, a, b *SecretsDump) bool {
	t.Helper()
	return proto.Equal(asAdmin(t, a), asAdmin(t, b))
}

// adminDump builds, with the admin/v3 protos, the SecretsConfigDump the
// agent served before it stopped linking them: the reference the own
// types are checked against.
func adminDump(t *testing.T) (*SecretsDump, *adminv3.SecretsConfigDump) {
	t.Helper()
	updated := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	attempt := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	secret, err := anypb.New(&tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{}}})
	if err != nil {
		t.Fatal(err)
	}
	ours := &SecretsDump{
		DynamicActiveSecrets: []*DynamicSecret{
			{Name: "default", VersionInfo: "v1", LastUpdated: timestamppb.New(updated), Secret: secret,
				ErrorState: &UpdateFailureState{Details: "EXPIRED since x <&>", LastUpdateAttempt: timestamppb.New(attempt)}},
			{Name: "ROOTCA"},
		},
		DynamicWarmingSecrets: []*DynamicSecret{{Name: "file-root:/a.pem"}},
	}
	theirs := &adminv3.SecretsConfigDump{
		DynamicActiveSecrets: []*adminv3.SecretsConfigDump_DynamicSecret{
			{Name: "default", VersionInfo: "v1", LastUpdated: timestamppb.New(updated), Secret: secret,
				ErrorState: &adminv3.UpdateFailureState{Details: "EXPIRED since x <&>", LastUpdateAttempt: timestamppb.New(attempt)}},
			{Name: "ROOTCA"},
		},
		DynamicWarmingSecrets: []*adminv3.SecretsConfigDump_DynamicSecret{{Name: "file-root:/a.pem"}},
	}
	return ours, theirs
}

// TestDumpJSONIsAdminProtoJSON: the body of /debug/secrets and
// /debug/config_dump is, after compaction, what protojson writes for the
// admin/v3 protos (same names, same field order, same timestamps), and
// parses strictly into them.
func TestDumpJSONIsAdminProtoJSON(t *testing.T) {
	ours, theirs := adminDump(t)
	compact := func(b []byte) string {
		var buf bytes.Buffer
		if err := json.Compact(&buf, b); err != nil {
			t.Fatalf("%v:\n%s", err, b)
		}
		return buf.String()
	}

	got, err := secretsJSON(ours)
	if err != nil {
		t.Fatal(err)
	}
	want, err := protojson.Marshal(theirs)
	if err != nil {
		t.Fatal(err)
	}
	if compact(got) != compact(want) {
		t.Errorf("/debug/secrets:\ngot  %s\nwant %s", compact(got), compact(want))
	}
	if !proto.Equal(asAdmin(t, ours), theirs) {
		t.Error("/debug/secrets does not parse back into the same SecretsConfigDump")
	}

	got, err = configDumpJSONOf(ours)
	if err != nil {
		t.Fatal(err)
	}
	packed, err := anypb.New(theirs)
	if err != nil {
		t.Fatal(err)
	}
	want, err = protojson.Marshal(&adminv3.ConfigDump{Configs: []*anypb.Any{packed}})
	if err != nil {
		t.Fatal(err)
	}
	if compact(got) != compact(want) {
		t.Errorf("/debug/config_dump:\ngot  %s\nwant %s", compact(got), compact(want))
	}

	empty, err := secretsJSON(&SecretsDump{})
	if err != nil || string(empty) != "{}\n" {
		t.Errorf("empty dump = %q, %v; want {}", empty, err)
	}
}

// TestParseSecretsProtoNames: ParseSecrets reads what protojson writes
// for the admin protos with either field naming, and ignores unknown
// fields.
func TestParseSecretsProtoNames(t *testing.T) {
	ours, theirs := adminDump(t)
	for _, opts := range []protojson.MarshalOptions{{}, {UseProtoNames: true}, {Multiline: true, EmitUnpopulated: true}} {
		body, err := opts.Marshal(theirs)
		if err != nil {
			t.Fatal(err)
		}
		body = bytes.Replace(body, []byte("{"), []byte(`{"futureField": [1, {"x": null}],`), 1)
		got, err := ParseSecrets(body)
		if err != nil {
			t.Fatalf("%+v: %v\n%s", opts, err, body)
		}
		if !sameDump(t, got, ours) {
			t.Errorf("%+v: parsed %s", opts, body)
		}
	}
	if _, err := ParseSecrets([]byte(`{"dynamicActiveSecrets": [{"name": "x", "secret": {"@type": "type.googleapis.com/no.such.Type"}}]}`)); err == nil || !strings.Contains(err.Error(), `secret "x"`) {
		t.Errorf("unknown @type: err = %v, want one naming the secret", err)
	}
}
