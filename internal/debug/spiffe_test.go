package debug

import (
	"bytes"
	"regexp"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sdsagent/sdsagent/internal/testpki"
)

// TestTableOfSPIFFEBundles: a ValidationContext for Envoy's SPIFFE
// validator shows a CA row per distinct root of its trust domains, and
// -o pem prints those roots.
func TestTableOfSPIFFEBundles(t *testing.T) {
	shared, other := testpki.NewRoot(t, "shared root"), testpki.NewRoot(t, "other root")
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	typed, err := anypb.New(&tlsv3.SPIFFECertValidatorConfig{TrustDomains: []*tlsv3.SPIFFECertValidatorConfig_TrustDomain{
		{Name: "mesh-a.example", TrustBundle: inline(shared.CertPEM)},
		{Name: "mesh-b.example", TrustBundle: inline(slices.Concat(shared.CertPEM, other.CertPEM))},
	}})
	if err != nil {
		t.Fatal(err)
	}
	secret, err := anypb.New(&tlsv3.Secret{Name: "ALL", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: "envoy.tls.cert_validator.spiffe", TypedConfig: typed},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	dump := &SecretsDump{DynamicActiveSecrets: []*DynamicSecret{{Name: "ALL", Secret: secret}}}

	var buf bytes.Buffer
	if err := WriteTable(&buf, dump, time.Now()); err != nil {
		t.Fatal(err)
	}
	if n := len(regexp.MustCompile(`(?m)^ALL +CA +ACTIVE +true`).FindAllString(buf.String(), -1)); n != 2 {
		t.Fatalf("%d CA rows, want one per distinct root:\n%s", n, buf.String())
	}
	pem, err := SecretPEM(dump, "ALL")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pem, slices.Concat(shared.CertPEM, other.CertPEM)) {
		t.Fatalf("SecretPEM =\n%s", pem)
	}
}
