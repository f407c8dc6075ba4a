package pki

import (
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/testpki"
)

// BenchmarkKeyAndCSR measures what the agent does locally for every CSR:
// a new key, the CSR and the PEM encoding of the key.
func BenchmarkKeyAndCSR(b *testing.B) {
	id, err := WorkloadID("cluster.local", "default", "web")
	if err != nil {
		b.Fatal(err)
	}
	for _, kt := range KeyTypes {
		b.Run(string(kt), func(b *testing.B) {
			for b.Loop() {
				key, err := GenerateKey(kt)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := NewCSR(key, id); err != nil {
					b.Fatal(err)
				}
				if _, err := EncodePrivateKey(key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerify measures the checks made on every CA answer.
func BenchmarkVerify(b *testing.B) {
	root := testpki.NewRoot(b, "root")
	key := testpki.NewKey(b)
	id, _ := WorkloadID("cluster.local", "default", "web")
	leaf := root.IssueLeaf(b, testpki.LeafOptions{URIs: []string{id.String()}, Key: key})
	chain, err := ParseChain([]string{string(leaf.CertPEM), string(root.CertPEM)})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	for b.Loop() {
		if _, err := Verify(VerifyInput{Chain: chain, Key: key.Public(), ID: id, Now: now}); err != nil {
			b.Fatal(err)
		}
	}
}
