package outagesim

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/url"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// mode is what the simulated CA does with a CSR.
type mode int

const (
	healthy         mode = iota // signs for the TTL asked
	shortTTL                    // signs, for a quarter of the TTL asked
	down                        // unreachable: fails at once, the probe sees it down
	hang                        // accepts the call and never answers
	garbage                     // answers with a PEM that does not parse
	keyMismatch                 // a leaf for another key than the CSR's
	wrongID                     // a leaf for another SPIFFE ID
	expiredLeaf                 // a leaf that has expired
	notYetValid                 // a leaf valid from an hour on
	otherRoot                   // a chain that ends in another root
	unauthenticated             // refuses the token
)

var modeNames = [...]string{"healthy", "short_ttl", "down", "hang", "garbage", "key_mismatch",
	"wrong_id", "expired_leaf", "not_yet_valid", "other_root", "unauthenticated"}

func (m mode) String() string { return modeNames[m] }

// failing reports whether the CA gives no usable certificate in mode m.
func (m mode) failing() bool { return m >= down }

// faultCA is a Signer and a Prober whose answers follow its mode.
type faultCA struct {
	t       testing.TB
	clk     *clocktest.Fake
	root    *testpki.CA
	other   *testpki.CA
	otherID *url.URL
	// onHang is called when a call starts hanging.
	onHang func()

	mu      sync.Mutex
	mode    mode
	changed chan struct{}            // closed and replaced when mode changes
	started int                      // Sign calls started
	signing chan struct{}            // closed and replaced when a Sign call starts
	ended   int                      // Sign calls returned
	hanging int                      // Sign calls blocked in hang
	waiters int                      // WaitReachable calls blocked
	byMode  [unauthenticated + 1]int // Sign calls by mode
}

func newFaultCA(t testing.TB, clk *clocktest.Fake, notBefore time.Time) *faultCA {
	other, err := url.Parse("spiffe://cluster.local/ns/default/sa/someone-else")
	if err != nil {
		t.Fatal(err)
	}
	return &faultCA{
		t:       t,
		clk:     clk,
		root:    testpki.NewRootValid(t, "sim root", notBefore.Add(-24*time.Hour), notBefore.Add(3650*24*time.Hour)),
		other:   testpki.NewRootValid(t, "other root", notBefore.Add(-24*time.Hour), notBefore.Add(3650*24*time.Hour)),
		otherID: other,
		changed: make(chan struct{}),
		signing: make(chan struct{}),
	}
}

// setMode switches the CA's behaviour and returns how many probes were
// waiting for it to become reachable.
func (f *faultCA) setMode(m mode) (waiters int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mode = m
	close(f.changed)
	f.changed = make(chan struct{})
	return f.waiters
}

// startedSince returns the Sign calls started, and a channel closed when
// the next one starts.
func (f *faultCA) startedSince() (started int, next <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.started, f.signing
}

// counts returns the Sign calls started, returned and hanging.
func (f *faultCA) counts() (started, ended, hanging int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.started, f.ended, f.hanging
}

// Sign answers as the current mode says.
func (f *faultCA) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration) ([]string, error) {
	f.mu.Lock()
	f.started++
	close(f.signing)
	f.signing = make(chan struct{})
	m := f.mode
	f.byMode[m]++
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.ended++
		f.mu.Unlock()
	}()
	switch m {
	case down:
		return nil, status.Error(codes.Unavailable, "create certificate: CA at sim-ca:15012 is unreachable: connection refused")
	case hang:
		f.mu.Lock()
		f.hanging++
		f.mu.Unlock()
		if f.onHang != nil {
			f.onHang()
		}
		<-ctx.Done()
		f.mu.Lock()
		f.hanging--
		f.mu.Unlock()
		return nil, status.FromContextError(ctx.Err()).Err()
	case unauthenticated:
		return nil, status.Error(codes.Unauthenticated, "create certificate: token refused")
	case garbage:
		return []string{"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"}, nil
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, errors.New("sim ca: csr is not PEM")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	now := f.clk.Now()
	nb, na := now.Add(-10*time.Second), now.Add(ttl)
	chainEnd := f.root.CertPEM
	var der []byte
	switch m {
	case healthy:
		der = f.root.SignCSR(f.t, csr, nb, na).Raw
	case shortTTL:
		der = f.root.SignCSR(f.t, csr, nb, now.Add(ttl/4)).Raw
	case keyMismatch:
		der = f.root.IssueLeaf(f.t, testpki.LeafOptions{URIs: []string{csr.URIs[0].String()}, NotBefore: nb, NotAfter: na}).Cert.Raw
	case wrongID:
		csr.URIs = []*url.URL{f.otherID}
		der = f.root.SignCSR(f.t, csr, nb, na).Raw
	case expiredLeaf:
		der = f.root.SignCSR(f.t, csr, now.Add(-2*ttl), now.Add(-ttl)).Raw
	case notYetValid:
		der = f.root.SignCSR(f.t, csr, now.Add(time.Hour), now.Add(time.Hour+ttl)).Raw
	case otherRoot:
		der = f.root.SignCSR(f.t, csr, nb, na).Raw
		chainEnd = f.other.CertPEM
	}
	return []string{string(testpki.EncodeCert(der)), string(chainEnd)}, nil
}

// Reachable reports whether a connection to the CA would be up.
func (f *faultCA) Reachable() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mode != down
}

// WaitReachable blocks until the CA is not down.
func (f *faultCA) WaitReachable(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.mode == down {
		ch := f.changed
		f.waiters++
		f.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		f.mu.Lock()
		f.waiters--
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}
