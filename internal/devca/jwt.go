package devca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/filewatch"
)

// DefaultJWTAudience is the audience Istio's agents request for the
// token they send to the CA (istiod's default).
const DefaultJWTAudience = "istio-ca"

// jwtLeeway absorbs clock skew between the token's issuer and the CA when
// checking exp, nbf and iat.
const jwtLeeway = 30 * time.Second

// saSubjectPrefix starts the subject of every Kubernetes service-account
// token: system:serviceaccount:NAMESPACE:NAME.
const saSubjectPrefix = "system:serviceaccount:"

// jwtAlgorithms are the signature algorithms the Kubernetes API server
// signs service-account tokens with (RSA keys: RS256; ECDSA keys: ES256,
// ES384, ES512 by curve). Anything else, "none" and HMAC included, is
// refused before any key is looked at.
func jwtAlgorithms() []jose.SignatureAlgorithm {
	return []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.ES384, jose.ES512}
}

// serviceAccount is the identity a verified token proves.
type serviceAccount struct {
	namespace, name string
}

func (sa serviceAccount) subject() string { return saSubjectPrefix + sa.namespace + ":" + sa.name }

// keySet is one parsed JWKS file.
type keySet struct {
	raw  []byte
	set  jose.JSONWebKeySet
	kids []string
}

// jwtAuth verifies Kubernetes service-account tokens with the keys of a
// JWKS file, which watch reloads when the file changes.
type jwtAuth struct {
	path     string
	issuer   string
	audience string
	keys     atomic.Pointer[keySet]
}

// newJWTAuth loads the JWKS file; a missing or broken file is an error.
func newJWTAuth(path, issuer, audience string) (*jwtAuth, error) {
	if issuer == "" {
		return nil, errors.New("jwt: an issuer is required with a JWKS file")
	}
	if audience == "" {
		audience = DefaultJWTAudience
	}
	a := &jwtAuth{path: path, issuer: issuer, audience: audience}
	ks, err := loadKeySet(path)
	if err != nil {
		return nil, err
	}
	a.keys.Store(ks)
	return a, nil
}

// loadKeySet reads and checks a JWKS file.
func loadKeySet(path string) (*keySet, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	ks, err := parseKeySet(data)
	if err != nil {
		return nil, fmt.Errorf("jwks %s: %w (want the JSON that kubectl get --raw /openid/v1/jwks prints)", path, err)
	}
	return ks, nil
}

// parseKeySet parses a JWKS whose keys are public RSA or ECDSA signature
// keys; any other key makes the whole set invalid.
func parseKeySet(data []byte) (*keySet, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("not a JSON Web Key Set: %w", err)
	}
	if len(set.Keys) == 0 {
		return nil, errors.New(`no keys in "keys"`)
	}
	ks := &keySet{raw: data, set: set}
	for i, k := range set.Keys {
		name := fmt.Sprintf("key %d (kid %q)", i, k.KeyID)
		if !k.IsPublic() {
			return nil, fmt.Errorf("%s is a private or symmetric key: give only the public keys", name)
		}
		switch k.Key.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey:
		default:
			return nil, fmt.Errorf("%s: %T is not an RSA or ECDSA public key", name, k.Key)
		}
		if k.Use != "" && k.Use != "sig" {
			return nil, fmt.Errorf("%s: use %q, want sig", name, k.Use)
		}
		if k.Algorithm != "" && !slices.Contains(jwtAlgorithms(), jose.SignatureAlgorithm(k.Algorithm)) {
			return nil, fmt.Errorf("%s: algorithm %q, want one of %v", name, k.Algorithm, jwtAlgorithms())
		}
		ks.kids = append(ks.kids, k.KeyID)
	}
	return ks, nil
}

// verify checks a token's signature, issuer, audience and times, and
// returns the service account it names. Its errors are refusals whose
// messages never hold the token.
func (a *jwtAuth) verify(token string, now time.Time) (serviceAccount, error) {
	fail := func(format string, args ...any) (serviceAccount, error) {
		return serviceAccount{}, refuse(refusedUnauthenticated, "service-account token: "+format, args...)
	}
	tok, err := jwt.ParseSigned(token, jwtAlgorithms())
	if err != nil {
		return fail("not a JWT signed with one of %v: %v", jwtAlgorithms(), err)
	}
	if len(tok.Headers) != 1 {
		return fail("%d signatures, want 1", len(tok.Headers))
	}
	ks := a.keys.Load()
	kid := tok.Headers[0].KeyID
	keys := ks.set.Keys
	if kid != "" {
		keys = ks.set.Key(kid)
	}
	if len(keys) == 0 {
		return fail("key id %q is not in the JWKS file %s (it holds %q; is the file the cluster's current /openid/v1/jwks?)", kid, a.path, ks.kids)
	}
	var claims jwt.Claims
	var k8s kubernetesClaims
	verified := false
	for _, k := range keys {
		if err = tok.Claims(k.Key, &claims, &k8s); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		return fail("signature does not verify with key %q of %s: %v", kid, a.path, err)
	}
	if claims.Expiry == nil {
		return fail("no expiry (exp): use a projected token with an expiry")
	}
	expect := jwt.Expected{Issuer: a.issuer, AnyAudience: jwt.Audience{a.audience}, Time: now}
	if err := claims.ValidateWithLeeway(expect, jwtLeeway); err != nil {
		switch {
		case errors.Is(err, jwt.ErrExpired):
			return fail("expired at %s", claims.Expiry.Time().UTC().Format(time.RFC3339))
		case errors.Is(err, jwt.ErrNotValidYet):
			return fail("not valid before %s", claims.NotBefore.Time().UTC().Format(time.RFC3339))
		case errors.Is(err, jwt.ErrIssuedInTheFuture):
			return fail("issued in the future (iat %s)", claims.IssuedAt.Time().UTC().Format(time.RFC3339))
		case errors.Is(err, jwt.ErrInvalidIssuer):
			return fail("issuer %q, want %q", claims.Issuer, a.issuer)
		case errors.Is(err, jwt.ErrInvalidAudience):
			return fail("audience %q does not include %q (request the token with that audience)", []string(claims.Audience), a.audience)
		}
		return fail("%v", err)
	}
	sa, err := k8s.serviceAccount(claims.Subject)
	if err != nil {
		return fail("%v", err)
	}
	return sa, nil
}

// kubernetesClaims is the private claim the API server adds to a
// service-account token.
type kubernetesClaims struct {
	Kubernetes *struct {
		Namespace      string `json:"namespace"`
		ServiceAccount *struct {
			Name string `json:"name"`
		} `json:"serviceaccount"`
	} `json:"kubernetes.io"`
}

// serviceAccount returns the service account that the subject
// system:serviceaccount:NS:SA names; the kubernetes.io claim, when
// present, must name the same one (or name it alone when sub is absent).
func (c kubernetesClaims) serviceAccount(sub string) (serviceAccount, error) {
	var fromSub, fromClaim serviceAccount
	if sub != "" {
		rest, ok := strings.CutPrefix(sub, saSubjectPrefix)
		ns, name, ok2 := strings.Cut(rest, ":")
		if !ok || !ok2 || ns == "" || name == "" || strings.Contains(name, ":") {
			return serviceAccount{}, fmt.Errorf("subject %q is not a service account (system:serviceaccount:NAMESPACE:NAME)", sub)
		}
		fromSub = serviceAccount{namespace: ns, name: name}
	}
	if k := c.Kubernetes; k != nil && k.ServiceAccount != nil {
		fromClaim = serviceAccount{namespace: k.Namespace, name: k.ServiceAccount.Name}
		if fromClaim.namespace == "" || fromClaim.name == "" {
			return serviceAccount{}, errors.New("kubernetes.io claim lacks the namespace or the service account name")
		}
	}
	switch {
	case sub == "" && fromClaim == (serviceAccount{}):
		return serviceAccount{}, errors.New("no subject (sub) and no kubernetes.io claim: not a service-account token")
	case sub == "":
		return fromClaim, nil
	case fromClaim != (serviceAccount{}) && fromClaim != fromSub:
		return serviceAccount{}, fmt.Errorf("subject %q and kubernetes.io claim %s disagree", sub, fromClaim.subject())
	}
	return fromSub, nil
}

// watch reloads the JWKS file whenever it changes (kubelet-safe, see
// filewatch) until ctx is done. A file that does not parse is refused
// with a log, and the previous keys stay.
func (a *jwtAuth) watch(ctx context.Context, clk clock.Clock, log *zap.Logger) error {
	w, err := filewatch.Open(filewatch.Config{Clock: clk, Logger: log})
	if err != nil {
		return fmt.Errorf("jwks: watch: %w", err)
	}
	defer w.Close()
	w.Set([]string{a.path})
	// The file may have changed between New and the watch.
	a.reload(log)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.Changes():
			a.reload(log)
		}
	}
}

// reload reads the JWKS file again and swaps in its keys if it changed
// and is valid.
func (a *jwtAuth) reload(log *zap.Logger) {
	log = log.With(zap.String("path", a.path))
	data, err := os.ReadFile(a.path)
	if err != nil {
		log.Error("jwks file refused, keeping the previous keys", zap.Error(err), zap.Strings("kids", a.keys.Load().kids))
		return
	}
	if bytes.Equal(data, a.keys.Load().raw) {
		return
	}
	ks, err := parseKeySet(data)
	if err != nil {
		log.Error("jwks file refused, keeping the previous keys", zap.Error(err), zap.Strings("kids", a.keys.Load().kids),
			zap.String("hint", "write the JSON that kubectl get --raw /openid/v1/jwks prints"))
		return
	}
	a.keys.Store(ks)
	log.Info("jwks loaded", zap.Strings("kids", ks.kids))
}

// authorize checks that a caller authenticated as sa may have the SPIFFE
// ID id: only its own service account's. A nil sa (the development
// token) may have any ID in the trust domain.
func (ca *CA) authorize(sa *serviceAccount, id string) error {
	if sa == nil {
		return nil
	}
	want := "spiffe://" + ca.trustDomain + "/ns/" + sa.namespace + "/sa/" + sa.name
	if id != want {
		return refuse(refusedForbidden, "token of %s may only get %s, the CSR asks for %s", sa.subject(), want, id)
	}
	return nil
}

// startAuth logs how callers authenticate and, with a JWKS, starts
// watching its file until ctx is done; the returned func stops the watch
// and waits for it.
func (ca *CA) startAuth(ctx context.Context, log *zap.Logger) (stop func()) {
	if ca.jwt == nil {
		log.Warn("development token: any holder of it gets any identity in the trust domain",
			zap.String("token_file", ca.TokenPath()), zap.String("trust_domain", ca.trustDomain),
			zap.String("hint", "use --jwks and --jwt-issuer to bind Kubernetes service-account tokens to their own identity"))
		return func() {}
	}
	log.Info("service-account tokens required",
		zap.String("jwks", ca.jwt.path), zap.String("issuer", ca.jwt.issuer),
		zap.String("audience", ca.jwt.audience), zap.Strings("kids", ca.jwt.keys.Load().kids))
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := ca.jwt.watch(ctx, ca.clock, log); err != nil {
			log.Error("jwks file not watched; key changes need a restart", zap.Error(err))
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
