package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// TestOperatorViewAfterRotation runs an agent whose certificate rotates
// every second or so and checks what an operator sees: the debug dump in
// Envoy admin's shape with the jq recipe working, metrics after a
// rotation, the CLI, and no private key in any body or log line.
func TestOperatorViewAfterRotation(t *testing.T) {
	ca := startCA(t, "127.0.0.1:0")
	a := startAgent(t, ca.agentArgs(filepath.Join(tempDir(t), "s.sock"), "--secret-ttl", "2s"))
	st := openStream(t, dial(t, a.socket))
	if err := st.Request("default", "ROOTCA", "no-such-secret"); err != nil {
		t.Fatal(err)
	}
	first, err := recv(t, st, waitLimit)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}
	pushed, err := recv(t, st, waitLimit)
	if err != nil {
		t.Fatalf("no rotation pushed: %v", err)
	}
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}
	a.logs.waitLine(t, "workload certificate rotated")
	key := pushed.Secret("default").GetTlsCertificate().GetPrivateKey().GetInlineBytes()
	keys := [][]byte{key, first.Secret("default").GetTlsCertificate().GetPrivateKey().GetInlineBytes()}

	// /debug/secrets is a SecretsConfigDump that round-trips through the proto.
	code, body := a.get(t, "/debug/secrets")
	if code != 200 {
		t.Fatalf("/debug/secrets = %d %s", code, body)
	}
	var dump adminv3.SecretsConfigDump
	if err := protojson.Unmarshal([]byte(body), &dump); err != nil {
		t.Fatalf("/debug/secrets is not a SecretsConfigDump: %v", err)
	}
	again, err := protojson.Marshal(&dump)
	if err != nil {
		t.Fatal(err)
	}
	var back adminv3.SecretsConfigDump
	if err := protojson.Unmarshal(again, &back); err != nil || !proto.Equal(&dump, &back) {
		t.Fatalf("dump does not round-trip: %v", err)
	}
	// The jq recipe, in Go:
	// .dynamicActiveSecrets[0].secret.tlsCertificate.certificateChain.inlineBytes | @base64d
	var raw struct {
		DynamicActiveSecrets []struct {
			Name        string `json:"name"`
			VersionInfo string `json:"versionInfo"`
			LastUpdated string `json:"lastUpdated"`
			Secret      struct {
				TLSCertificate struct {
					CertificateChain struct{ InlineBytes string } `json:"certificateChain"`
				} `json:"tlsCertificate"`
				ValidationContext struct {
					TrustedCA struct{ InlineBytes string } `json:"trustedCa"`
				} `json:"validationContext"`
			} `json:"secret"`
		} `json:"dynamicActiveSecrets"`
	}
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw.DynamicActiveSecrets) != 2 || raw.DynamicActiveSecrets[0].Name != "default" || raw.DynamicActiveSecrets[1].Name != "ROOTCA" {
		t.Fatalf("entries = %+v, want default then ROOTCA", raw.DynamicActiveSecrets)
	}
	chain, err := base64.StdEncoding.DecodeString(raw.DynamicActiveSecrets[0].Secret.TLSCertificate.CertificateChain.InlineBytes)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := base64.StdEncoding.DecodeString(raw.DynamicActiveSecrets[1].Secret.ValidationContext.TrustedCA.InlineBytes)
	if err != nil {
		t.Fatal(err)
	}
	// The dump may already hold a later rotation than the one pushed; it
	// must be a chain the agent served with a version and a time.
	if !bytes.HasPrefix(chain, []byte("-----BEGIN CERTIFICATE-----")) || raw.DynamicActiveSecrets[0].VersionInfo == "" || raw.DynamicActiveSecrets[0].LastUpdated == "" {
		t.Fatalf("default entry incomplete: %+v", raw.DynamicActiveSecrets[0])
	}
	if !bytes.Equal(roots, pushed.Secret("ROOTCA").GetValidationContext().GetTrustedCa().GetInlineBytes()) &&
		!bytes.Equal(roots, first.Secret("ROOTCA").GetValidationContext().GetTrustedCa().GetInlineBytes()) {
		t.Fatal("ROOTCA in the dump is not what SDS served")
	}
	var sec tlsv3.Secret
	if err := dump.DynamicActiveSecrets[0].GetSecret().UnmarshalTo(&sec); err != nil {
		t.Fatal(err)
	}
	if got := sec.GetTlsCertificate().GetPrivateKey().GetInlineString(); got != "[redacted]" {
		t.Fatalf("private key in the dump = %q, want [redacted]", got)
	}

	// The config dump wraps the same, and /debug/sds shows the stream.
	code, cfgDump := a.get(t, "/debug/config_dump")
	var cd adminv3.ConfigDump
	if code != 200 || protojson.Unmarshal([]byte(cfgDump), &cd) != nil || len(cd.GetConfigs()) != 1 {
		t.Fatalf("/debug/config_dump = %d %s", code, cfgDump)
	}
	code, sdsView := a.get(t, "/debug/sds")
	if code != 200 || !strings.Contains(sdsView, "no-such-secret") || !strings.Contains(sdsView, "sidecar~") {
		t.Fatalf("/debug/sds does not show the stream and its unknown name: %d %s", code, sdsView)
	}

	// Metrics after a rotation.
	_, metricsBody := a.get(t, "/metrics")
	for _, want := range []string{
		`sdsagent_rotations_total `,
		`sdsagent_cert_expiry_timestamp_seconds{resource="default"}`,
		`sdsagent_cert_expiry_timestamp_seconds{resource="ROOTCA"}`,
		`sdsagent_csr_requests_total{result="success"}`,
		`sdsagent_csr_duration_seconds_bucket{result="success",le=`,
		`sdsagent_sds_streams{api="sotw"} 1`,
		`sdsagent_sds_pushes_total{api="sotw"}`,
		`sdsagent_sds_unknown_names_total 1`,
		`sdsagent_sds_nacks_total 0`,
	} {
		if !strings.Contains(metricsBody, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(metricsBody, "sdsagent_rotations_total 0") {
		t.Error("rotations_total is 0 after a rotation")
	}

	// The CLI reads the same endpoint.
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if code := run(ctx, []string{"secrets", "--http-addr", a.http}, func(string) string { return "" }, &out, &errOut); code != 0 {
		t.Fatalf("sdsagent secrets exited %d: %s", code, errOut.String())
	}
	table := out.String()
	for _, want := range []string{"RESOURCE NAME", "VALID CERT", "SERIAL NUMBER", "default", "Cert Chain", "ROOTCA", "CA", "ACTIVE", "true"} {
		if !strings.Contains(table, want) {
			t.Fatalf("secrets table lacks %q:\n%s", want, table)
		}
	}

	// No private key anywhere an operator looks.
	views := []string{body, cfgDump, sdsView, metricsBody, table, a.logs.String(), ca.logs.String()}
	for _, k := range keys {
		lines := strings.Split(strings.TrimSpace(string(k)), "\n")
		for _, v := range views {
			if strings.Contains(v, "PRIVATE KEY") || strings.Contains(v, lines[1]) || strings.Contains(v, base64.StdEncoding.EncodeToString(k)[:40]) {
				t.Fatal("private key material in an operator view")
			}
		}
	}
}
