package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const e2eIssuer = "https://kubernetes.default.svc.cluster.local"

// apiServer signs service-account tokens as the Kubernetes API server
// does, with an ES256 key published in a JWKS file.
type apiServer struct {
	key  *ecdsa.PrivateKey
	jwks string
}

func newAPIServer(t *testing.T, dir string) *apiServer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return &apiServer{key: key, jwks: path}
}

// tokenFile writes a token for ns/sa with audience istio-ca that expires
// at exp, and returns its path.
func (s *apiServer) tokenFile(t *testing.T, dir, ns, sa string, exp time.Time) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: s.key, KeyID: "k1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(sig).Claims(jwt.Claims{
		Issuer: e2eIssuer, Subject: "system:serviceaccount:" + ns + ":" + sa, Audience: jwt.Audience{"istio-ca"},
		IssuedAt: jwt.NewNumericDate(exp.Add(-2 * time.Hour)), NotBefore: jwt.NewNumericDate(exp.Add(-2 * time.Hour)), Expiry: jwt.NewNumericDate(exp),
	}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, ns+"-"+sa+"-"+exp.Format("150405")+".jwt")
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func withToken(args []string, token string) []string {
	for i := range args {
		if args[i] == "--token-file" {
			args[i+1] = token
		}
	}
	return args
}

func TestAgentWithServiceAccountTokensGetsOnlyItsOwnIdentity(t *testing.T) {
	dir := tempDir(t)
	api := newAPIServer(t, dir)
	ca := startCA(t, "127.0.0.1:0", "--jwks", api.jwks, "--jwt-issuer", e2eIssuer)
	ca.logs.waitLine(t, "service-account tokens required")
	valid := time.Now().Add(time.Hour)
	webToken := api.tokenFile(t, dir, "shop", "web", valid)

	web := startAgent(t, withToken(ca.agentArgs(filepath.Join(dir, "web.sock"), "--namespace", "shop", "--service-account", "web"), webToken))
	if got, err := identity(t, web.socket).SPIFFEID(); err != nil || got != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("web identity = %s, %v", got, err)
	}

	// web's token asks for db's identity: refused, and the agent says why.
	thief := startAgent(t, withToken(ca.agentArgs(filepath.Join(dir, "db.sock"), "--namespace", "shop", "--service-account", "db"), webToken))
	line := thief.logs.waitLine(t, "certificate request failed")
	msg, _ := line["error"].(string)
	for _, want := range []string{"PermissionDenied", "token of system:serviceaccount:shop:web may only get spiffe://cluster.local/ns/shop/sa/web", "check that the token's identity"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("failure log %q lacks %q", msg, want)
		}
	}
	if code, body := thief.get(t, "/ready"); code != 503 || !strings.Contains(body, "may only get") {
		t.Fatalf("/ready = %d %q, want 503 with the CA's reason", code, body)
	}

	// An expired token: Unauthenticated, naming the token file.
	expired := api.tokenFile(t, dir, "shop", "web", time.Now().Add(-time.Hour))
	late := startAgent(t, withToken(ca.agentArgs(filepath.Join(dir, "late.sock"), "--namespace", "shop", "--service-account", "web"), expired))
	line = late.logs.waitLine(t, "certificate request failed")
	if msg, _ := line["error"].(string); !strings.Contains(msg, "Unauthenticated") || !strings.Contains(msg, "expired at") || !strings.Contains(msg, expired) {
		t.Fatalf("failure log %q, want Unauthenticated, expired, and the token file", msg)
	}

	tok, err := os.ReadFile(webToken)
	if err != nil {
		t.Fatal(err)
	}
	sigPart := strings.TrimSpace(string(tok))[strings.LastIndex(strings.TrimSpace(string(tok)), ".")+1:]
	for _, logs := range []string{web.logs.String(), thief.logs.String(), late.logs.String(), ca.logs.String()} {
		if strings.Contains(logs, sigPart) {
			t.Fatal("a token in the logs")
		}
	}
}
