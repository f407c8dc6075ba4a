package devca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/sdsagent/sdsagent/internal/devca"
	"github.com/sdsagent/sdsagent/internal/filewatch/filewatchtest"
)

const (
	testIssuer = "https://kubernetes.default.svc.cluster.local"
	webID      = "spiffe://cluster.local/ns/shop/sa/web"
)

// signingKey is a key the test's "API server" signs tokens with.
type signingKey struct {
	kid  string
	alg  jose.SignatureAlgorithm
	priv crypto.Signer
}

func newRSAKey(t *testing.T, kid string) signingKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return signingKey{kid: kid, alg: jose.RS256, priv: k}
}

func newECKey(t *testing.T, kid string) signingKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signingKey{kid: kid, alg: jose.ES256, priv: k}
}

// jwks returns the public JWKS of keys, as kubectl get --raw
// /openid/v1/jwks prints it.
func jwks(t *testing.T, keys ...signingKey) []byte {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, k := range keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.priv.Public(), KeyID: k.kid, Algorithm: string(k.alg), Use: "sig"})
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// saClaims are the claims of a service-account token for ns/sa, valid
// from an hour ago for an hour.
func saClaims(ns, sa string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": testIssuer,
		"sub": "system:serviceaccount:" + ns + ":" + sa,
		"aud": []string{devca.DefaultJWTAudience},
		"iat": now.Add(-time.Hour).Unix(),
		"nbf": now.Add(-time.Hour).Unix(),
		"exp": now.Add(time.Hour).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      ns,
			"serviceaccount": map[string]any{"name": sa, "uid": "5e3a1c2d"},
		},
	}
}

// sign returns claims as a compact JWT signed by k.
func sign(t *testing.T, k signingKey, claims map[string]any) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: jose.JSONWebKey{Key: k.priv, KeyID: k.kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// with returns a copy of claims with changes applied; a nil value
// deletes the claim.
func with(claims map[string]any, changes map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range claims {
		out[k] = v
	}
	for k, v := range changes {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

// unsigned returns claims as a JWT with header alg "none".
func unsigned(t *testing.T, kid string, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(map[string]string{"alg": "none", "typ": "JWT", "kid": kid}) + "." + enc(claims) + "."
}

// hmacWithPublicKey returns claims signed HS256 with the PEM of k's
// public key as the secret: the key-confusion attack on verifiers that
// let the token pick the algorithm.
func hmacWithPublicKey(t *testing.T, k signingKey, claims map[string]any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: jose.JSONWebKey{Key: secret, KeyID: k.kid}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// logEvents returns a logger that records entries and sends the message
// of each on a channel, so tests wait for a log line as an event.
func logEvents(t *testing.T) (*zap.Logger, *observer.ObservedLogs, <-chan string) {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	events := make(chan string, 100)
	log := zap.New(core, zap.Hooks(func(e zapcore.Entry) error {
		select {
		case events <- e.Message:
		default:
		}
		return nil
	}))
	return log, logs, events
}

func waitLog(t *testing.T, events <-chan string, msg string) {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case m := <-events:
			if m == msg {
				return
			}
		case <-deadline:
			t.Fatalf("no %q log line within %s", msg, waitTimeout)
		}
	}
}

// jwtCA starts a CA that trusts the JWKS written to a kubelet-style
// volume, and returns its client and the volume directory.
func jwtCA(t *testing.T, log *zap.Logger, keys ...signingKey) (securityapi.IstioCertificateServiceClient, string) {
	t.Helper()
	vol := filepath.Join(t.TempDir(), "jwks")
	filewatchtest.KubeletWrite(t, vol, map[string][]byte{"jwks.json": jwks(t, keys...)})
	ca := newCA(t, devca.Config{JWKSFile: filepath.Join(vol, "jwks.json"), JWTIssuer: testIssuer, Logger: log})
	return dial(t, ca, serve(t, ca)), vol
}

// ask sends a CSR for id with token and returns the leaf's URI or the
// error.
func ask(t *testing.T, client securityapi.IstioCertificateServiceClient, token, id string) (string, error) {
	t.Helper()
	resp, err := client.CreateCertificate(authCtx(t, token), &securityapi.IstioCertificateRequest{
		Csr: csrPEM(t, csrSpec{uris: []string{id}}), ValidityDuration: 3600,
	})
	if err != nil {
		return "", err
	}
	leaf := parseCert(t, resp.GetCertChain()[0])
	if len(leaf.URIs) != 1 {
		t.Fatalf("leaf URIs %v", leaf.URIs)
	}
	return leaf.URIs[0].String(), nil
}

func TestJWTBindsServiceAccountTokensToTheirIdentity(t *testing.T) {
	rsaKey, ecKey := newRSAKey(t, "rsa-1"), newECKey(t, "ec-1")
	log, logs, _ := logEvents(t)
	client, _ := jwtCA(t, log, rsaKey, ecKey)
	web := saClaims("shop", "web")
	now := time.Now()

	tests := []struct {
		name     string
		token    string
		id       string
		code     codes.Code
		inReason string
	}{
		{"RS256 token for its own identity", sign(t, rsaKey, web), webID, codes.OK, ""},
		{"ES256 token for its own identity", sign(t, ecKey, web), webID, codes.OK, ""},
		{"only the kubernetes.io claim", sign(t, rsaKey, with(web, map[string]any{"sub": nil})), webID, codes.OK, ""},
		{"token for another service account", sign(t, rsaKey, saClaims("shop", "db")), webID, codes.PermissionDenied,
			"token of system:serviceaccount:shop:db may only get spiffe://cluster.local/ns/shop/sa/db, the CSR asks for " + webID},
		{"token for another namespace", sign(t, rsaKey, saClaims("kube-system", "web")), webID, codes.PermissionDenied, "may only get spiffe://cluster.local/ns/kube-system/sa/web"},
		{"expired", sign(t, rsaKey, with(web, map[string]any{"exp": now.Add(-10 * time.Minute).Unix()})), webID, codes.Unauthenticated, "expired at"},
		{"not yet valid", sign(t, rsaKey, with(web, map[string]any{"nbf": now.Add(10 * time.Minute).Unix()})), webID, codes.Unauthenticated, "not valid before"},
		{"no expiry", sign(t, rsaKey, with(web, map[string]any{"exp": nil})), webID, codes.Unauthenticated, "no expiry"},
		{"wrong issuer", sign(t, rsaKey, with(web, map[string]any{"iss": "https://evil.example"})), webID, codes.Unauthenticated, `issuer "https://evil.example", want "` + testIssuer + `"`},
		{"wrong audience", sign(t, rsaKey, with(web, map[string]any{"aud": []string{"api"}})), webID, codes.Unauthenticated, `does not include "istio-ca"`},
		{"alg none", unsigned(t, "rsa-1", web), webID, codes.Unauthenticated, "not a JWT signed with one of"},
		{"HS256 with the public key as secret", hmacWithPublicKey(t, rsaKey, web), webID, codes.Unauthenticated, "not a JWT signed with one of"},
		{"unknown kid", sign(t, newECKey(t, "gone"), web), webID, codes.Unauthenticated, `key id "gone" is not in the JWKS file`},
		{"known kid, another key", sign(t, signingKey{kid: "ec-1", alg: jose.ES256, priv: newECKey(t, "x").priv}, web), webID, codes.Unauthenticated, "signature does not verify"},
		{"RSA kid with an EC signature", sign(t, signingKey{kid: "rsa-1", alg: jose.ES256, priv: ecKey.priv}, web), webID, codes.Unauthenticated, "signature does not verify"},
		{"subject not a service account", sign(t, rsaKey, with(web, map[string]any{"sub": "alice", "kubernetes.io": nil})), webID, codes.Unauthenticated, `subject "alice" is not a service account`},
		{"subject and claim disagree", sign(t, rsaKey, with(web, map[string]any{"sub": "system:serviceaccount:shop:db"})), webID, codes.Unauthenticated, "disagree"},
		{"the development token", "not-a-jwt", webID, codes.Unauthenticated, "not a JWT"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ask(t, client, tc.token, tc.id)
			if tc.code == codes.OK {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if got != tc.id {
					t.Fatalf("leaf URI %s, want %s", got, tc.id)
				}
				return
			}
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.inReason) {
				t.Fatalf("got %v, want %s with %q", err, tc.code, tc.inReason)
			}
		})
	}
	for _, e := range logs.All() {
		for _, f := range e.Context {
			if strings.Contains(f.String, "eyJ") {
				t.Fatalf("a token in the log: %s %v", e.Message, e.ContextMap())
			}
		}
	}
	refused := logs.FilterMessage("certificate request refused").FilterField(zap.String("subject", "system:serviceaccount:shop:db"))
	if refused.Len() == 0 {
		t.Fatal("a refused identity is not logged with the token's subject")
	}
}

func TestJWKSRotationWithoutRestart(t *testing.T) {
	oldKey, newKey := newRSAKey(t, "old"), newECKey(t, "new")
	log, logs, events := logEvents(t)
	client, vol := jwtCA(t, log, oldKey)
	waitLog(t, events, "service-account tokens required")
	web := saClaims("shop", "web")
	if _, err := ask(t, client, sign(t, newKey, web), webID); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("token of a key not yet published: %v, want Unauthenticated", err)
	}

	// kubelet publishes the API server's new key beside the old one.
	filewatchtest.KubeletWrite(t, vol, map[string][]byte{"jwks.json": jwks(t, oldKey, newKey)})
	waitLog(t, events, "jwks loaded")
	for _, k := range []signingKey{oldKey, newKey} {
		if got, err := ask(t, client, sign(t, k, web), webID); err != nil || got != webID {
			t.Fatalf("token of key %s after rotation: %s, %v", k.kid, got, err)
		}
	}

	// A broken file is refused; the keys stay.
	filewatchtest.KubeletWrite(t, vol, map[string][]byte{"jwks.json": []byte(`{"keys": [`)})
	waitLog(t, events, "jwks file refused, keeping the previous keys")
	if got, err := ask(t, client, sign(t, newKey, web), webID); err != nil || got != webID {
		t.Fatalf("token after a broken JWKS: %s, %v; want the previous keys kept", got, err)
	}
	line := logs.FilterMessage("jwks file refused, keeping the previous keys").All()[0].ContextMap()
	if !strings.Contains(line["error"].(string), "not a JSON Web Key Set") {
		t.Fatalf("refusal log %v does not say what is wrong", line)
	}

	// The old key is withdrawn.
	filewatchtest.KubeletWrite(t, vol, map[string][]byte{"jwks.json": jwks(t, newKey)})
	waitLog(t, events, "jwks loaded")
	if _, err := ask(t, client, sign(t, oldKey, web), webID); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("token of a withdrawn key: %v, want Unauthenticated", err)
	}
}

func TestJWKSFileErrors(t *testing.T) {
	rsaKey := newRSAKey(t, "rsa-1")
	private, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: rsaKey.priv, KeyID: "rsa-1"}}})
	if err != nil {
		t.Fatal(err)
	}
	symmetric, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: []byte("0123456789abcdef0123456789abcdef"), KeyID: "hs"}}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		content []byte // nil: no file
		issuer  string
		wantErr string
	}{
		{"missing file", nil, testIssuer, "no such file"},
		{"not JSON", []byte("-----BEGIN PUBLIC KEY-----"), testIssuer, "not a JSON Web Key Set"},
		{"no keys", []byte(`{"keys": []}`), testIssuer, "no keys"},
		{"private key", private, testIssuer, "private or symmetric key"},
		{"symmetric key", symmetric, testIssuer, "private or symmetric key"},
		{"encryption key", []byte(strings.Replace(string(jwks(t, rsaKey)), `"use":"sig"`, `"use":"enc"`, 1)), testIssuer, `use "enc"`},
		{"no issuer", jwks(t, rsaKey), "", "issuer is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "jwks.json")
			if tc.content != nil {
				filewatchtest.RenameOver(t, path, tc.content)
			}
			_, err := devca.New(devca.Config{Dir: filepath.Join(dir, "ca"), JWKSFile: path, JWTIssuer: tc.issuer})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("New = %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}

func TestDevelopmentTokenWarnsAtStart(t *testing.T) {
	log, logs, events := logEvents(t)
	ca := newCA(t, devca.Config{Logger: log})
	client := dial(t, ca, serve(t, ca))
	waitLog(t, events, "development token: any holder of it gets any identity in the trust domain")
	// As before: the token gets any identity, kube-system's admin included.
	admin := "spiffe://cluster.local/ns/kube-system/sa/admin"
	if got, err := ask(t, client, readToken(t, ca), admin); err != nil || got != admin {
		t.Fatalf("development token: %s, %v", got, err)
	}
	if logs.FilterMessage("service-account tokens required").Len() != 0 {
		t.Fatal("a CA without JWKS claims to require service-account tokens")
	}
}
