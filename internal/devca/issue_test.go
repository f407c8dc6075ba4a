package devca_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/sdsagent/sdsagent/internal/caapi"
	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/devca"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

const workloadID = "spiffe://cluster.local/ns/default/sa/frontend"

// checkLeaf verifies a CreateCertificate answer the way an agent would, and
// that the leaf is exactly what the CA promises.
func checkLeaf(t *testing.T, ca *devca.CA, resp interface{ GetCertChain() []string }, key crypto.Signer, id string, now time.Time, ttl time.Duration) *x509.Certificate {
	t.Helper()
	chain := resp.GetCertChain()
	if len(chain) != 2 {
		t.Fatalf("cert_chain has %d elements, want 2 (leaf, root)", len(chain))
	}
	if chain[1] != string(ca.RootPEM()) {
		t.Errorf("cert_chain[1] is not the root from %s", ca.RootCertPath())
	}
	leaf := parseCert(t, chain[0])
	root := parseCert(t, chain[1])

	for _, eku := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots:       rootPool(t, ca),
			CurrentTime: now,
			KeyUsages:   []x509.ExtKeyUsage{eku},
		}); err != nil {
			t.Errorf("leaf does not verify against root for %v: %v", eku, err)
		}
	}
	if err := leaf.CheckSignatureFrom(root); err != nil {
		t.Errorf("leaf not signed by root: %v", err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("leaf URI SANs = %v, want exactly [%s]", leaf.URIs, id)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf has extra SANs: dns=%v ip=%v email=%v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if got := leaf.Subject.String(); got != "" {
		t.Errorf("leaf subject = %q, want empty", got)
	}
	oidSAN := asn1.ObjectIdentifier{2, 5, 29, 17}
	sanCritical := false
	for _, ext := range leaf.Extensions {
		if ext.Id.Equal(oidSAN) {
			sanCritical = ext.Critical
		}
	}
	if !sanCritical {
		t.Error("SAN extension is not critical although the subject is empty")
	}
	if wantNB := now.Add(-10 * time.Second); !leaf.NotBefore.Equal(wantNB) {
		t.Errorf("NotBefore = %s, want %s (now - 10s)", leaf.NotBefore, wantNB)
	}
	if wantNA := now.Add(ttl); !leaf.NotAfter.Equal(wantNA) {
		t.Errorf("NotAfter = %s, want %s (now + %s)", leaf.NotAfter, wantNA, ttl)
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; leaf.KeyUsage != want {
		t.Errorf("KeyUsage = %v, want %v", leaf.KeyUsage, want)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ExtKeyUsage = %v, want [ServerAuth ClientAuth]", leaf.ExtKeyUsage)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %x is not a positive 128-bit number", leaf.SerialNumber)
	}
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		t.Error("leaf public key is not the CSR's")
	}
	return leaf
}

func TestCreateCertificate_Issues(t *testing.T) {
	// Whole seconds, as certificates store them.
	start := time.Now().Truncate(time.Second)
	clk := clocktest.New(start)
	core, logs := observer.New(zapcore.InfoLevel)
	ca, client, token := startCA(t, devca.Config{
		Clock:      clk,
		Logger:     zap.New(core),
		MaxTTL:     12 * time.Hour,
		DefaultTTL: 2 * time.Hour,
	})

	tests := []struct {
		name    string
		at      time.Duration // clock offset from start when the call is made
		id      string
		ttlSecs int64
		wantTTL time.Duration
	}{
		{name: "requested ttl", ttlSecs: 3600, wantTTL: time.Hour, id: workloadID},
		{name: "zero ttl uses default", ttlSecs: 0, wantTTL: 2 * time.Hour, id: workloadID},
		{name: "negative ttl uses default", ttlSecs: -30, wantTTL: 2 * time.Hour, id: workloadID},
		{name: "ttl equal to max", ttlSecs: 12 * 3600, wantTTL: 12 * time.Hour, id: workloadID},
		{name: "later clock moves validity", at: 5 * time.Hour, ttlSecs: 600, wantTTL: 10 * time.Minute, id: workloadID},
		{name: "other workload", at: 6 * time.Hour, ttlSecs: 60, wantTTL: time.Minute, id: "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"},
	}
	serials := make(map[string]string)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk.Set(start.Add(tc.at))
			now := clk.Now()
			key := testpki.NewKey(t)
			resp, err := client.CreateCertificate(authCtx(t, token), &securityapi.IstioCertificateRequest{
				Csr:              csrPEM(t, csrSpec{key: key, uris: []string{tc.id}}),
				ValidityDuration: tc.ttlSecs,
			})
			if err != nil {
				t.Fatalf("CreateCertificate: %v", err)
			}
			leaf := checkLeaf(t, ca, resp, key, tc.id, now, tc.wantTTL)
			serial := leaf.SerialNumber.Text(16)
			if prev, dup := serials[serial]; dup {
				t.Errorf("serial %s reused (also issued in %q)", serial, prev)
			}
			serials[serial] = tc.name

			entries := logs.FilterMessage("certificate issued").FilterField(zap.String("serial", serial)).All()
			if len(entries) != 1 {
				t.Fatalf("%d issuance log entries for serial %s, want 1", len(entries), serial)
			}
			e := entries[0]
			if e.LoggerName != "devca" {
				t.Errorf("logger name = %q, want devca", e.LoggerName)
			}
			fields := e.ContextMap()
			want := map[string]any{
				"spiffe_id":  tc.id,
				"cluster_id": clusterID,
				"ttl":        tc.wantTTL,
			}
			for k, v := range want {
				if fields[k] != v {
					t.Errorf("log field %s = %v, want %v", k, fields[k], v)
				}
			}
			if na, ok := fields["not_after"].(time.Time); !ok || !na.Equal(leaf.NotAfter) {
				t.Errorf("log field not_after = %v, want %s", fields["not_after"], leaf.NotAfter)
			}
		})
	}
	assertNoSecretsLogged(t, logs, token)
}

func TestCreateCertificate_DefaultTTL(t *testing.T) {
	tests := []struct {
		name    string
		cfg     devca.Config
		wantTTL time.Duration
	}{
		{name: "defaults", cfg: devca.Config{}, wantTTL: 24 * time.Hour},
		{name: "default capped at max", cfg: devca.Config{MaxTTL: time.Hour}, wantTTL: time.Hour},
		{name: "explicit default", cfg: devca.Config{DefaultTTL: 90 * time.Minute}, wantTTL: 90 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktest.New(time.Now().Truncate(time.Second))
			tc.cfg.Clock = clk
			ca, client, token := startCA(t, tc.cfg)
			key := testpki.NewKey(t)
			resp, err := client.CreateCertificate(authCtx(t, token), &securityapi.IstioCertificateRequest{
				Csr: csrPEM(t, csrSpec{key: key, uris: []string{workloadID}}),
			})
			if err != nil {
				t.Fatalf("CreateCertificate: %v", err)
			}
			checkLeaf(t, ca, resp, key, workloadID, clk.Now(), tc.wantTTL)
		})
	}
}

func TestCreateCertificate_Refused(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	ca, client, token := startCA(t, devca.Config{Logger: zap.New(core)})
	otherToken := strings.Repeat("ab", 32)

	weakRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatalf("generate RSA key: %v", err)
	}
	valid := func(t *testing.T) string {
		t.Helper()
		return csrPEM(t, csrSpec{uris: []string{workloadID}})
	}
	tests := []struct {
		name     string
		md       []string // metadata pairs; nil means a valid token
		csr      func(t *testing.T) string
		ttlSecs  int64
		wantCode codes.Code
		wantMsg  string // substring of the status message
	}{
		{
			name:     "missing token",
			md:       []string{"ClusterID", clusterID},
			csr:      valid,
			wantCode: codes.Unauthenticated,
			wantMsg:  `missing "authorization: Bearer <token>" metadata`,
		},
		{
			name:     "wrong token",
			md:       []string{"authorization", "Bearer " + otherToken},
			csr:      valid,
			wantCode: codes.Unauthenticated,
			wantMsg:  "bearer token does not match",
		},
		{
			name:     "token prefix",
			md:       []string{"authorization", "Bearer " + token[:len(token)-1]},
			csr:      valid,
			wantCode: codes.Unauthenticated,
			wantMsg:  "bearer token does not match",
		},
		{
			name:     "not a bearer token",
			md:       []string{"authorization", "Basic " + token},
			csr:      valid,
			wantCode: codes.Unauthenticated,
			wantMsg:  "not a Bearer token",
		},
		{
			name:     "ttl over max",
			csr:      valid,
			ttlSecs:  48 * 3600,
			wantCode: codes.InvalidArgument,
			wantMsg:  "requested TTL 48h0m0s is greater than the max allowed TTL 24h0m0s",
		},
		{
			name:     "ttl overflowing a duration",
			csr:      valid,
			ttlSecs:  math.MaxInt64,
			wantCode: codes.InvalidArgument,
			wantMsg:  "is greater than the max allowed TTL 24h0m0s",
		},
		{
			name:     "empty csr",
			csr:      func(*testing.T) string { return "" },
			wantCode: codes.InvalidArgument,
			wantMsg:  "csr is empty",
		},
		{
			name:     "garbage csr",
			csr:      func(*testing.T) string { return "this is not a csr" },
			wantCode: codes.InvalidArgument,
			wantMsg:  "csr is not PEM encoded",
		},
		{
			name:     "garbage inside PEM",
			csr:      func(*testing.T) string { return encodeCSR([]byte("not DER at all")) },
			wantCode: codes.InvalidArgument,
			wantMsg:  "csr does not parse",
		},
		{
			name:     "certificate instead of csr",
			csr:      func(*testing.T) string { return string(ca.RootPEM()) },
			wantCode: codes.InvalidArgument,
			wantMsg:  `csr PEM block is "CERTIFICATE"`,
		},
		{
			name: "bad signature",
			csr: func(t *testing.T) string {
				der := csrDER(t, csrSpec{uris: []string{workloadID}})
				der[len(der)-1] ^= 0xff // last byte of the signature's S value
				return encodeCSR(der)
			},
			wantCode: codes.InvalidArgument,
			wantMsg:  "csr signature does not verify",
		},
		{
			name: "two URI SANs",
			csr: func(t *testing.T) string {
				return csrPEM(t, csrSpec{uris: []string{workloadID, "spiffe://cluster.local/ns/default/sa/backend"}})
			},
			wantCode: codes.InvalidArgument,
			wantMsg:  "csr carries 2 URI SANs, want exactly one SPIFFE ID",
		},
		{
			name:     "no URI SAN",
			csr:      func(t *testing.T) string { return csrPEM(t, csrSpec{}) },
			wantCode: codes.InvalidArgument,
			wantMsg:  "csr carries 0 URI SANs",
		},
		{
			name: "DNS SAN",
			csr: func(t *testing.T) string {
				return csrPEM(t, csrSpec{uris: []string{workloadID}, dns: []string{"frontend.default.svc"}})
			},
			wantCode: codes.InvalidArgument,
			wantMsg:  "csr carries DNS SANs",
		},
		{
			name: "IP SAN",
			csr: func(t *testing.T) string {
				return csrPEM(t, csrSpec{uris: []string{workloadID}, ips: []net.IP{net.ParseIP("10.0.0.1")}})
			},
			wantCode: codes.InvalidArgument,
			wantMsg:  "csr carries IP SANs",
		},
		{
			name: "email SAN",
			csr: func(t *testing.T) string {
				return csrPEM(t, csrSpec{uris: []string{workloadID}, emails: []string{"a@example.com"}})
			},
			wantCode: codes.InvalidArgument,
			wantMsg:  "csr carries email SANs",
		},
		{
			name: "not a spiffe URI",
			csr: func(t *testing.T) string {
				return csrPEM(t, csrSpec{uris: []string{"https://cluster.local/ns/default/sa/frontend"}})
			},
			wantCode: codes.InvalidArgument,
			wantMsg:  "is not a valid SPIFFE ID",
		},
		{
			name:     "spiffe ID without path",
			csr:      func(t *testing.T) string { return csrPEM(t, csrSpec{uris: []string{"spiffe://cluster.local"}}) },
			wantCode: codes.InvalidArgument,
			wantMsg:  "path is empty",
		},
		{
			name: "spiffe ID with port",
			csr: func(t *testing.T) string {
				return csrPEM(t, csrSpec{uris: []string{"spiffe://cluster.local:443/ns/a/sa/b"}})
			},
			wantCode: codes.InvalidArgument,
			wantMsg:  "is not a valid SPIFFE ID",
		},
		{
			name: "other trust domain",
			csr: func(t *testing.T) string {
				return csrPEM(t, csrSpec{uris: []string{"spiffe://example.org/ns/default/sa/frontend"}})
			},
			wantCode: codes.PermissionDenied,
			wantMsg:  `is in trust domain "example.org"; this CA signs only for "cluster.local"`,
		},
		{
			name:     "weak RSA key",
			csr:      func(t *testing.T) string { return csrPEM(t, csrSpec{key: weakRSA, uris: []string{workloadID}}) },
			wantCode: codes.InvalidArgument,
			wantMsg:  "RSA key of 1024 bits",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			md := tc.md
			if md == nil {
				md = []string{"authorization", "Bearer " + token, "ClusterID", clusterID}
			}
			resp, err := client.CreateCertificate(callCtx(t, md...), &securityapi.IstioCertificateRequest{
				Csr:              tc.csr(t),
				ValidityDuration: tc.ttlSecs,
			})
			if err == nil {
				t.Fatalf("CreateCertificate succeeded with %d certificates, want %s", len(resp.GetCertChain()), tc.wantCode)
			}
			st := status.Convert(err)
			if st.Code() != tc.wantCode {
				t.Errorf("code = %s, want %s (message %q)", st.Code(), tc.wantCode, st.Message())
			}
			if !strings.Contains(st.Message(), tc.wantMsg) {
				t.Errorf("message = %q, want it to contain %q", st.Message(), tc.wantMsg)
			}
			for _, secret := range []string{token, otherToken} {
				if strings.Contains(st.Message(), secret) {
					t.Errorf("message %q echoes a token", st.Message())
				}
			}
			entries := logs.FilterMessage("certificate request refused").
				FilterField(zap.String("reason", st.Message())).All()
			if len(entries) == 0 {
				t.Errorf("refusal not logged with reason %q", st.Message())
			}
		})
	}
	if n := logs.FilterMessage("certificate issued").Len(); n != 0 {
		t.Errorf("%d certificates issued, want none", n)
	}
	assertNoSecretsLogged(t, logs, token, otherToken)
}

// TestCreateCertificate_Direct calls the method without gRPC, as a caller
// embedding the CA would.
func TestCreateCertificate_Direct(t *testing.T) {
	ca := newCA(t, devca.Config{})
	token := readToken(t, ca)
	tests := []struct {
		name     string
		ctx      context.Context
		req      *caapi.CertificateRequest
		wantCode codes.Code
	}{
		{
			name:     "no metadata",
			ctx:      context.Background(),
			req:      &caapi.CertificateRequest{Csr: csrPEM(t, csrSpec{uris: []string{workloadID}})},
			wantCode: codes.Unauthenticated,
		},
		{
			name:     "nil request",
			ctx:      metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token)),
			req:      nil,
			wantCode: codes.InvalidArgument,
		},
		{
			name:     "valid",
			ctx:      metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "bearer "+token)),
			req:      &caapi.CertificateRequest{Csr: csrPEM(t, csrSpec{uris: []string{workloadID}})},
			wantCode: codes.OK,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := ca.CreateCertificate(tc.ctx, tc.req)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("code = %s (%v), want %s", got, err, tc.wantCode)
			}
			if tc.wantCode == codes.OK && len(resp.GetCertChain()) != 2 {
				t.Errorf("cert_chain has %d elements, want 2", len(resp.GetCertChain()))
			}
		})
	}
}

// TestCreateCertificate_CAExpiry moves the clock to the end of the root's
// life: leaves never outlive the root, and nothing is signed after it.
func TestCreateCertificate_CAExpiry(t *testing.T) {
	clk := clocktest.New(time.Now().Truncate(time.Second))
	ca, client, token := startCA(t, devca.Config{Clock: clk})
	root := parseCert(t, string(ca.RootPEM()))

	tests := []struct {
		name     string
		at       time.Time
		wantCode codes.Code
	}{
		{name: "leaf capped at root expiry", at: root.NotAfter.Add(-time.Hour), wantCode: codes.OK},
		{name: "root expired", at: root.NotAfter.Add(time.Second), wantCode: codes.FailedPrecondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk.Set(tc.at)
			resp, err := client.CreateCertificate(authCtx(t, token), &securityapi.IstioCertificateRequest{
				Csr:              csrPEM(t, csrSpec{uris: []string{workloadID}}),
				ValidityDuration: 4 * 3600,
			})
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("code = %s (%v), want %s", got, err, tc.wantCode)
			}
			if err != nil {
				return
			}
			leaf := parseCert(t, resp.GetCertChain()[0])
			if !leaf.NotAfter.Equal(root.NotAfter) {
				t.Errorf("leaf NotAfter = %s, want the root's %s", leaf.NotAfter, root.NotAfter)
			}
		})
	}
}

func TestCreateCertificate_Concurrent(t *testing.T) {
	_, client, token := startCA(t, devca.Config{})
	const n = 16
	ids := make([]string, n)
	csrs := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("spiffe://cluster.local/ns/default/sa/w%d", i)
		csrs[i] = csrPEM(t, csrSpec{uris: []string{ids[i]}})
	}
	type result struct {
		serial string
		err    error
	}
	results := make(chan result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
			id := ids[i]
			resp, err := client.CreateCertificate(ctx, &securityapi.IstioCertificateRequest{Csr: csrs[i]})
			if err != nil {
				results <- result{err: err}
				return
			}
			block, _ := pem.Decode([]byte(resp.GetCertChain()[0]))
			if block == nil {
				results <- result{err: fmt.Errorf("leaf is not PEM")}
				return
			}
			leaf, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				results <- result{err: err}
				return
			}
			if leaf.URIs[0].String() != id {
				results <- result{err: fmt.Errorf("asked for %s, got %s", id, leaf.URIs[0])}
				return
			}
			results <- result{serial: leaf.SerialNumber.Text(16)}
		}()
	}
	wg.Wait()
	close(results)
	seen := make(map[string]bool)
	for r := range results {
		if r.err != nil {
			t.Errorf("CreateCertificate: %v", r.err)
			continue
		}
		if seen[r.serial] {
			t.Errorf("serial %s issued twice", r.serial)
		}
		seen[r.serial] = true
	}
}

// assertNoSecretsLogged fails if any log entry mentions a secret.
func assertNoSecretsLogged(t *testing.T, logs *observer.ObservedLogs, secrets ...string) {
	t.Helper()
	for _, e := range logs.All() {
		text := e.Message + fmt.Sprint(e.ContextMap())
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("log entry %q leaks a token", e.Message)
			}
		}
		if strings.Contains(text, "PRIVATE KEY") {
			t.Errorf("log entry %q leaks a private key", e.Message)
		}
	}
}
