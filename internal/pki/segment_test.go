package pki

import (
	"regexp"
	"testing"
)

// isPathSegment accepts exactly what the SPIFFE spec's path segment
// pattern accepts; it replaced a regular expression that package
// initialisation compiled at every start.
func TestIsPathSegmentMatchesTheSpecPattern(t *testing.T) {
	spec := regexp.MustCompile(`^[a-zA-Z0-9._-]+$`)
	for _, seg := range []string{
		"", "a", "default", "Web-1", "a.b_c-D9", ".", "..", "...",
		"ns/x", "a b", "a\n", "\na", "ñ", "a@b", "a:b", "a%2F", "a\x00", "é", "sa+", "~", "Ä",
	} {
		if got, want := isPathSegment(seg), spec.MatchString(seg); got != want {
			t.Errorf("isPathSegment(%q) = %v, the spec pattern says %v", seg, got, want)
		}
	}
}
