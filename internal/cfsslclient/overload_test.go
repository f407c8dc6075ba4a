package cfsslclient_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/cfsslclient"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// TestOverloadAnswersCarryRetryAfter checks that HTTP 429 and 503 answers
// (of CFSSL or of a proxy in front of it) come back as an overload the
// agent's retry policy reads (cache.ClassifyFailure), with Retry-After as
// the pushback, and that other refusals do not.
func TestOverloadAnswersCarryRetryAfter(t *testing.T) {
	root := testpki.NewRoot(t, "fake cfssl root")
	rootFile := writeFile(t, t.TempDir(), "root.pem", string(root.CertPEM))
	answer := func(status int, retryAfter string, cfsslJSON bool) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			w.WriteHeader(status)
			if cfsslJSON {
				_ = json.NewEncoder(w).Encode(map[string]any{
					"success": false, "result": nil, "messages": []any{},
					"errors": []map[string]any{{"code": status, "message": "busy"}},
				})
				return
			}
			_, _ = w.Write([]byte("<html>slow down</html>"))
		}
	}
	tests := []struct {
		name  string
		sign  http.HandlerFunc
		want  cache.Failure
		parts []string
		api   bool
	}{
		{"429 with Retry-After seconds", answer(http.StatusTooManyRequests, "7", true),
			cache.Failure{Overloaded: true, Pushback: 7 * time.Second}, []string{"HTTP 429: the CA is overloaded; it asks to retry in 7s"}, true},
		{"503 from a proxy, no Retry-After", answer(http.StatusServiceUnavailable, "", false),
			cache.Failure{Overloaded: true}, []string{"slow down", "the CA is overloaded; retrying with backoff"}, false},
		{"429 with a garbage Retry-After", answer(http.StatusTooManyRequests, "soon", true),
			cache.Failure{Overloaded: true}, []string{"retrying with backoff"}, true},
		{"429 with an HTTP-date", answer(http.StatusTooManyRequests, time.Now().Add(time.Hour).UTC().Format(http.TimeFormat), true),
			cache.Failure{Overloaded: true, Pushback: cache.RetryOverloadMax}, []string{"asks to retry in"}, true},
		{"400 is a refusal, not overload", answer(http.StatusBadRequest, "7", true),
			cache.Failure{}, []string{"HTTP 400"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakeCFSSL(t, root, tc.sign)
			c := newClient(t, cfsslclient.Config{URL: srv.URL, RootCertFile: rootFile, Profile: "mesh"})
			_, _, err := sign(t, c)
			if err == nil {
				t.Fatal("Sign succeeded")
			}
			for _, p := range tc.parts {
				if !strings.Contains(err.Error(), p) {
					t.Errorf("err = %v\nwant it to contain %q", err, p)
				}
			}
			if got := cache.ClassifyFailure(err); got != tc.want {
				t.Errorf("ClassifyFailure(%v) = %+v, want %+v", err, got, tc.want)
			}
			var apiErr *cfsslclient.APIError
			if errors.As(err, &apiErr) != tc.api {
				t.Errorf("errors.As(APIError) = %v, want %v", !tc.api, tc.api)
			}
		})
	}
}
