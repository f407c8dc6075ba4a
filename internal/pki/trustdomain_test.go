package pki

import (
	"strings"
	"testing"
)

// TestCheckTrustDomainSaysWhichRule checks the one trust-domain check
// (config, cache and the dev CA all use it) names the rule broken.
func TestCheckTrustDomainSaysWhichRule(t *testing.T) {
	for _, tc := range []struct{ td, want string }{
		{"", "invalid trust domain: empty"},
		{strings.Repeat("a", 256), "longer than 255 characters"},
		{"Example.org", `invalid trust domain "Example.org": character 'E' is not allowed`},
		{"example.org/x", `character '/' is not allowed`},
		{"spiffe://example.org", `character ':' is not allowed`},
	} {
		err := CheckTrustDomain(tc.td)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckTrustDomain(%.20q) = %v, want %q", tc.td, err, tc.want)
		}
	}
	for _, td := range []string{"cluster.local", "mesh-a.example", "a_b.c-1", strings.Repeat("a", 255)} {
		if err := CheckTrustDomain(td); err != nil {
			t.Errorf("CheckTrustDomain(%.20q) = %v, want nil", td, err)
		}
	}
}
