package cfsslclient_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/cfsslclient"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// fakeCFSSL answers info as CFSSL does, with root as the signer, and
// sign with the handler under test.
func fakeCFSSL(t *testing.T, root *testpki.CA, sign http.HandlerFunc) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/cfssl/info", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{
			"success": true, "errors": []any{}, "messages": []any{},
			"result": map[string]any{"certificate": string(root.CertPEM), "expiry": "1h", "usages": []string{"server auth"}},
		})
	})
	// A handler that waits on its request's context is released when the
	// test ends, before the server waits for its handlers.
	stop, cancel := context.WithCancel(context.Background())
	mux.HandleFunc("/api/v1/cfssl/sign", func(w http.ResponseWriter, r *http.Request) {
		ctx, done := context.WithCancel(r.Context())
		defer done()
		go func() {
			select {
			case <-stop.Done():
				done()
			case <-ctx.Done():
			}
		}()
		sign(w, r.WithContext(ctx))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(cancel)
	return srv
}

func TestAnswersThatAreNotACertificate(t *testing.T) {
	root := testpki.NewRoot(t, "fake cfssl root")
	rootFile := writeFile(t, t.TempDir(), "root.pem", string(root.CertPEM))
	cfsslError := func(status, code int, msg string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(status)
			_ = json.NewEncoder(w).Encode(map[string]any{
				"success": false, "result": nil, "messages": []any{},
				"errors": []map[string]any{{"code": code, "message": msg}},
			})
		}
	}
	tests := []struct {
		name    string
		sign    http.HandlerFunc
		timeout time.Duration
		want    []string
		apiCode int
	}{
		{"unknown profile", cfsslError(400, 5400, "Unknown profile"), 0,
			[]string{"cfssl sign: CFSSL refused the request (HTTP 400, error code 5400: \"Unknown profile\")", `CFSSL has no profile "mesh": check --cfssl-profile`}, 5400},
		{"policy refusal", cfsslError(400, 5300, "Invalid request"), 0,
			[]string{"error code 5300", "signing policy refused"}, 5300},
		{"bad CSR", cfsslError(400, 9002, "CSR parse failed"), 0,
			[]string{"error code 9002", "could not take the CSR"}, 9002},
		{"success false with status 200", cfsslError(200, 1000, "Unknown certificate error"), 0,
			[]string{"HTTP 200, error code 1000"}, 1000},
		{"garbage body", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("\x00\x01garbage{")) }, 0,
			[]string{"answered with a body that is not CFSSL's JSON", `"garbage{"`}, 0},
		{"JSON that is not CFSSL's", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"certificate":"x"}`)) }, 0,
			[]string{"not CFSSL's JSON"}, 0},
		{"HTTP error page", func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "<html>bad gateway</html>", http.StatusBadGateway)
		}, 0, []string{"answered HTTP 502 with a body that is not CFSSL's JSON", "bad gateway"}, 0},
		{"success without certificate", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"success":true,"result":{},"errors":[],"messages":[]}`))
		}, 0, []string{"cfssl sign: answer has no certificate"}, 0},
		{"no answer", func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, 50 * time.Millisecond,
			[]string{"unreachable or slow: no answer within"}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakeCFSSL(t, root, tc.sign)
			c := newClient(t, cfsslclient.Config{URL: srv.URL, RootCertFile: rootFile, Profile: "mesh", Timeout: tc.timeout})
			_, _, err := sign(t, c)
			if err == nil {
				t.Fatal("Sign succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("err = %v\nwant it to contain %q", err, w)
				}
			}
			var apiErr *cfsslclient.APIError
			if got := errors.As(err, &apiErr); got != (tc.apiCode != 0) || (got && apiErr.Code != tc.apiCode) {
				t.Fatalf("APIError = %v %+v, want code %d", got, apiErr, tc.apiCode)
			}
		})
	}
}

func TestSignSendsTheProfileAndLabel(t *testing.T) {
	root := testpki.NewRoot(t, "fake cfssl root")
	rootFile := writeFile(t, t.TempDir(), "root.pem", string(root.CertPEM))
	got := make(chan map[string]any, 1)
	srv := fakeCFSSL(t, root, func(w http.ResponseWriter, r *http.Request) {
		var req map[string]any
		_ = json.NewDecoder(r.Body).Decode(&req)
		got <- req
		http.Error(w, "stop here", http.StatusTeapot)
	})
	c := newClient(t, cfsslclient.Config{URL: srv.URL + "/", RootCertFile: rootFile, Profile: "mesh", Label: "primary"})
	_, _, _ = sign(t, c)
	req := <-got
	if req["profile"] != "mesh" || req["label"] != "primary" || !strings.Contains(req["certificate_request"].(string), "BEGIN CERTIFICATE REQUEST") {
		t.Fatalf("sign request %v", req)
	}
}

func TestNewRefusesABadConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg  cfsslclient.Config
		want string
	}{
		{cfsslclient.Config{URL: "cfssl:8888", RootCertFile: "r"}, "not a CFSSL API base URL"},
		{cfsslclient.Config{URL: "ftp://cfssl:8888", RootCertFile: "r"}, "not a CFSSL API base URL"},
		{cfsslclient.Config{URL: "https://cfssl:8888?x=1", RootCertFile: "r"}, "plain base URL"},
		{cfsslclient.Config{URL: "https://cfssl:8888"}, "root certificate file is required"},
	} {
		if _, err := cfsslclient.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
