package debug

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/sdsagent/sdsagent/cache"
)

// jqPath reproduces a jq path such as
// .dynamicActiveSecrets[0].secret.tlsCertificate.certificateChain.inlineBytes
// on decoded JSON: string keys and integer indexes.
func jqPath(t *testing.T, doc any, path ...any) any {
	t.Helper()
	cur := doc
	for i, p := range path {
		switch p := p.(type) {
		case string:
			m, ok := cur.(map[string]any)
			if !ok {
				t.Fatalf("jq path %v: element %d is %T, not an object", path, i, cur)
			}
			if cur, ok = m[p]; !ok {
				t.Fatalf("jq path %v: no key %q (keys: %v)", path, p, keys(m))
			}
		case int:
			a, ok := cur.([]any)
			if !ok || p >= len(a) {
				t.Fatalf("jq path %v: element %d is %T, not an array with index %d", path, i, cur, p)
			}
			cur = a[p]
		}
	}
	return cur
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// base64Decode is `base64 --decode` of a jq -r string.
func base64Decode(t *testing.T, v any) []byte {
	t.Helper()
	s, ok := v.(string)
	if !ok {
		t.Fatalf("value %v is %T, not a string", v, v)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("base64 --decode: %v", err)
	}
	return b
}

func secretsServer(t *testing.T) (*fixture, *Server, string) {
	t.Helper()
	f := newFixture(t)
	s := newServer(t, Config{Secrets: secretsOf(f.store, fakeToProto), Versions: fakeVersions})
	return f, s, serveLoopback(t, s)
}

func TestSecretsJQRecipe(t *testing.T) {
	f, _, base := secretsServer(t)
	code, body, ctype := get(t, newClient(t), base+"/debug/secrets")
	if code != http.StatusOK || ctype != "application/json" {
		t.Fatalf("/debug/secrets = %d %q: %s", code, ctype, body)
	}
	var doc any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, body)
	}
	// jq -r '.dynamicActiveSecrets[0].secret.tlsCertificate.certificateChain.inlineBytes' | base64 --decode
	if got := base64Decode(t, jqPath(t, doc, "dynamicActiveSecrets", 0, "secret", "tlsCertificate", "certificateChain", "inlineBytes")); !bytes.Equal(got, f.chainPEM) {
		t.Errorf("default chain recipe gives\n%s\nwant\n%s", got, f.chainPEM)
	}
	// jq -r '.dynamicActiveSecrets[1].secret.validationContext.trustedCa.inlineBytes' | base64 --decode
	if got := base64Decode(t, jqPath(t, doc, "dynamicActiveSecrets", 1, "secret", "validationContext", "trustedCa", "inlineBytes")); !bytes.Equal(got, f.rootsPEM) {
		t.Errorf("ROOTCA recipe gives\n%s\nwant\n%s", got, f.rootsPEM)
	}
	wantKey := map[string]any{"inlineString": "[redacted]"}
	if got := jqPath(t, doc, "dynamicActiveSecrets", 0, "secret", "tlsCertificate", "privateKey"); !equalJSON(got, wantKey) {
		t.Errorf("default privateKey = %v, want %v", got, wantKey)
	}
	const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
	wantNames := []string{cache.WorkloadCertName, cache.RootCertName, fileCertName, fileRootName}
	entries := jqPath(t, doc, "dynamicActiveSecrets").([]any)
	if len(entries) != len(wantNames) {
		t.Fatalf("%d entries, want %d", len(entries), len(wantNames))
	}
	snap := f.store.Snapshot()
	for i, name := range wantNames {
		if got := jqPath(t, doc, "dynamicActiveSecrets", i, "name"); got != name {
			t.Errorf("entry %d name = %v, want %q", i, got, name)
		}
		if got := jqPath(t, doc, "dynamicActiveSecrets", i, "secret", "@type"); got != secretType {
			t.Errorf("entry %d @type = %v", i, got)
		}
		if got := jqPath(t, doc, "dynamicActiveSecrets", i, "secret", "name"); got != name {
			t.Errorf("entry %d secret.name = %v, want %q", i, got, name)
		}
		entry := entries[i].(map[string]any)
		if v, ok := fakeVersions()[name]; ok {
			if entry["versionInfo"] != v {
				t.Errorf("%s versionInfo = %v, want %q", name, entry["versionInfo"], v)
			}
		} else if _, ok := entry["versionInfo"]; ok {
			t.Errorf("%s versionInfo = %v, want none", name, entry["versionInfo"])
		}
		sec, _ := snap.Get(name)
		updated, err := time.Parse(time.RFC3339Nano, entry["lastUpdated"].(string))
		if err != nil || !updated.Equal(sec.UpdatedAt) {
			t.Errorf("%s lastUpdated = %v (%v), want %v", name, entry["lastUpdated"], err, sec.UpdatedAt)
		}
	}
	f.assertNoKey(t, "/debug/secrets", body)
}

func equalJSON(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func TestSecretsRoundTrip(t *testing.T) {
	_, s, base := secretsServer(t)
	want, err := s.secretsDump(s.cfg.Secrets())
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t)
	_, body, _ := get(t, c, base+"/debug/secrets")
	got, err := ParseSecrets(body)
	if err != nil {
		t.Fatal(err)
	}
	if !sameDump(t, got, want) {
		t.Fatalf("parsed dump differs from the served one:\ngot  %v\nwant %v", got, want)
	}
	again, err := secretsJSON(got)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseSecrets(again)
	if err != nil {
		t.Fatal(err)
	}
	if !sameDump(t, back, got) {
		t.Fatalf("dump does not survive a second round trip")
	}
	// The key is the marker in every TLS certificate.
	for _, e := range got.GetDynamicActiveSecrets() {
		sec := &tlsv3.Secret{}
		if err := e.GetSecret().UnmarshalTo(sec); err != nil {
			t.Fatal(err)
		}
		if tc := sec.GetTlsCertificate(); tc != nil && tc.GetPrivateKey().GetInlineString() != "[redacted]" {
			t.Errorf("%s private key = %v", e.GetName(), tc.GetPrivateKey())
		}
	}

	code, cd, _ := get(t, c, base+"/debug/config_dump")
	if code != http.StatusOK {
		t.Fatalf("/debug/config_dump = %d %s", code, cd)
	}
	dump := &adminv3.ConfigDump{}
	if err := protojson.Unmarshal(cd, dump); err != nil {
		t.Fatal(err)
	}
	if len(dump.GetConfigs()) != 1 {
		t.Fatalf("config_dump has %d configs, want 1", len(dump.GetConfigs()))
	}
	inner := &adminv3.SecretsConfigDump{}
	if err := dump.GetConfigs()[0].UnmarshalTo(inner); err != nil {
		t.Fatalf("config_dump configs[0]: %v", err)
	}
	if !proto.Equal(inner, asAdmin(t, want)) {
		t.Fatalf("config_dump secrets differ from /debug/secrets")
	}
}

// TestNoPrivateKeyInDebugBodies checks every /debug/ body, also with a
// ToProto that ignores the placeholder and puts real keys back.
func TestNoPrivateKeyInDebugBodies(t *testing.T) {
	f := newFixture(t)
	realKeys := func(sec *cache.Secret) (*tlsv3.Secret, error) {
		orig, _ := f.store.Snapshot().Get(sec.Name)
		return fakeToProto(orig)
	}
	keyInStaple := func(sec *cache.Secret) (*tlsv3.Secret, error) {
		orig, _ := f.store.Snapshot().Get(sec.Name)
		msg, err := fakeToProto(orig)
		if tc := msg.GetTlsCertificate(); tc != nil {
			tc.OcspStaple = &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: orig.PrivateKeyPEM}}
		}
		return msg, err
	}
	streams := func() []StreamInfo {
		return []StreamInfo{{ID: 1, API: "sotw", NodeID: "n", Names: []string{"default"}}}
	}
	tests := []struct {
		name     string
		toProto  func(*cache.Secret) (*tlsv3.Secret, error)
		wantCode int
	}{
		{"placeholder", fakeToProto, http.StatusOK},
		{"real keys redacted", realKeys, http.StatusOK},
		{"key in unredacted field withheld", keyInStaple, http.StatusInternalServerError},
	}
	paths := []string{"/debug/secrets", "/debug/config_dump", "/debug/sds", "/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/goroutine?debug=1"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, Config{Secrets: secretsOf(f.store, tt.toProto), Versions: fakeVersions, Streams: streams})
			base := serveLoopback(t, s)
			c := newClient(t)
			for _, p := range paths {
				code, body, _ := get(t, c, base+p)
				want := http.StatusOK
				if strings.HasPrefix(p, "/debug/secrets") || strings.HasPrefix(p, "/debug/config_dump") {
					want = tt.wantCode
				}
				if code != want {
					t.Errorf("%s = %d, want %d: %.200s", p, code, want, body)
				}
				f.assertNoKey(t, p, body)
			}
		})
	}
}

func TestSecretsToProtoError(t *testing.T) {
	f := newFixture(t)
	failing := func(sec *cache.Secret) (*tlsv3.Secret, error) {
		if sec.Name == cache.RootCertName {
			return nil, errors.New("convert secret: empty trusted ca")
		}
		return fakeToProto(sec)
	}
	s := newServer(t, Config{Secrets: secretsOf(f.store, failing)})
	code, body, _ := get(t, newClient(t), serveLoopback(t, s)+"/debug/secrets")
	if code != http.StatusInternalServerError || !strings.Contains(string(body), `"ROOTCA"`) || !strings.Contains(string(body), "empty trusted ca") {
		t.Fatalf("/debug/secrets = %d %s", code, body)
	}
	f.assertNoKey(t, "error body", body)
}

func TestSDSView(t *testing.T) {
	opened := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	streams := []StreamInfo{
		{ID: 7, API: "delta", NodeID: "sidecar~10.0.0.2~b", Names: []string{"default", "foo"}, UnknownNames: []string{"foo"}, AckedVersion: "v3", Nacks: 2, LastNack: "bad cert", OpenedAt: opened.Add(time.Minute)},
		{ID: 3, API: "sotw", NodeID: "sidecar~10.0.0.1~a", Names: []string{"ROOTCA", "bar", "foo"}, UnknownNames: []string{"foo", "bar"}, AckedVersion: "v2", OpenedAt: opened},
		{ID: 9, API: "sotw", NodeID: "n"},
	}
	nameErrors := map[string]string{"file-cert:/missing.pem~/k.pem": "file /missing.pem: missing"}
	s := newServer(t, Config{Streams: func() []StreamInfo { return streams }, Versions: fakeVersions, NameErrors: func() map[string]string { return nameErrors }})
	code, body, ctype := get(t, newClient(t), serveLoopback(t, s)+"/debug/sds")
	if code != http.StatusOK || ctype != "application/json" {
		t.Fatalf("/debug/sds = %d %q %s", code, ctype, body)
	}
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	if got, want := keys(doc), []string{"name_errors", "streams", "unknown_names", "versions"}; !slices.Equal(got, want) {
		t.Errorf("top-level keys = %v, want %v", got, want)
	}
	if !equalJSON(doc["name_errors"], nameErrors) {
		t.Errorf("name_errors = %v, want %v", doc["name_errors"], nameErrors)
	}
	if !equalJSON(doc["unknown_names"], []string{"bar", "foo"}) {
		t.Errorf("unknown_names = %v, want [bar foo]", doc["unknown_names"])
	}
	if !equalJSON(doc["versions"], fakeVersions()) {
		t.Errorf("versions = %v", doc["versions"])
	}
	list := doc["streams"].([]any)
	first := list[0].(map[string]any)
	if got, want := keys(first), []string{"acked_version", "api", "id", "last_nack", "nacks", "names", "node_id", "opened_at", "unknown_names"}; !slices.Equal(got, want) {
		t.Errorf("stream keys = %v, want %v", got, want)
	}
	if first["opened_at"] != "2026-03-01T12:00:00Z" || first["node_id"] != "sidecar~10.0.0.1~a" {
		t.Errorf("first stream = %v", first)
	}
	var view sdsView
	if err := json.Unmarshal(body, &view); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, st := range view.Streams {
		ids = append(ids, st.ID)
	}
	if !slices.Equal(ids, []int64{3, 7, 9}) {
		t.Errorf("stream ids = %v, want sorted [3 7 9]", ids)
	}
	if st := view.Streams[1]; st.API != "delta" || st.Nacks != 2 || st.LastNack != "bad cert" || st.AckedVersion != "v3" || !st.OpenedAt.Equal(opened.Add(time.Minute)) {
		t.Errorf("stream 7 = %+v", st)
	}
	if st := view.Streams[2]; st.Names == nil || st.UnknownNames == nil {
		t.Errorf("stream 9 lists are null, want []: %s", body)
	}
	if streams[0].ID != 7 {
		t.Errorf("the caller's slice was reordered")
	}
}

// TestLoopbackOnly checks the middleware on requests whose peer address
// is set directly.
func TestLoopbackOnly(t *testing.T) {
	f := newFixture(t)
	reg := prometheus.NewRegistry()
	s := newServer(t, Config{Secrets: secretsOf(f.store, fakeToProto), Streams: func() []StreamInfo { return nil }, Gatherer: reg})
	h := s.Handler()
	debugPaths := []string{"/debug/secrets", "/debug/config_dump", "/debug/sds", "/debug/pprof/", "/debug/pprof/cmdline", "/debug/nothing"}
	openPaths := []string{"/healthz", "/ready", "/metrics"}
	tests := []struct {
		remote  string
		allowed bool
	}{
		{"127.0.0.1:40000", true},
		{"127.10.20.30:1", true},
		{"[::1]:40000", true},
		{"[::ffff:127.0.0.1]:40000", true},
		{"10.1.2.3:40000", false},
		{"192.168.1.10:40000", false},
		{"0.0.0.0:40000", false},
		{"[2001:db8::1]:40000", false},
		{"[fe80::1%eth0]:40000", false},
		{"[::]:40000", false},
		{"127.0.0.1", false}, // no port: not a peer address
		{"", false},
		{"@", false}, // a Unix socket peer
	}
	for _, tt := range tests {
		t.Run(tt.remote, func(t *testing.T) {
			for _, p := range debugPaths {
				req := httptest.NewRequest(http.MethodGet, p, nil)
				req.RemoteAddr = tt.remote
				req.Header.Set("X-Forwarded-For", "127.0.0.1")
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if tt.allowed {
					if rec.Code == http.StatusForbidden {
						t.Errorf("%s from %q = 403, want allowed", p, tt.remote)
					}
					f.assertNoKey(t, p, rec.Body.Bytes())
					continue
				}
				if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "loopback") {
					t.Errorf("%s from %q = %d %q, want 403", p, tt.remote, rec.Code, rec.Body)
				}
			}
			for _, p := range openPaths {
				req := httptest.NewRequest(http.MethodGet, p, nil)
				req.RemoteAddr = tt.remote
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					t.Errorf("%s from %q = %d, want 200", p, tt.remote, rec.Code)
				}
			}
		})
	}
}

// nonLoopbackIP returns an address of this host that is not loopback.
func nonLoopbackIP(t *testing.T) net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Skipf("no interface addresses: %v", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP
		}
	}
	t.Skip("this host has no non-loopback address")
	return nil
}

// TestLoopbackOnlyRealListener connects from a non-loopback address of
// this host, as a pod neighbour would.
func TestLoopbackOnlyRealListener(t *testing.T) {
	ip := nonLoopbackIP(t)
	lis, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		t.Skipf("listen on %s: %v", ip, err)
	}
	f := newFixture(t)
	s := newServer(t, Config{Secrets: secretsOf(f.store, fakeToProto), Streams: func() []StreamInfo { return nil }, Gatherer: prometheus.NewRegistry()})
	base := serve(t, s, lis)
	c := newClient(t)
	for _, p := range []string{"/debug/secrets", "/debug/config_dump", "/debug/sds", "/debug/pprof/"} {
		code, body, _ := get(t, c, base+p)
		if code != http.StatusForbidden {
			t.Errorf("%s from %s = %d, want 403", p, ip, code)
		}
		f.assertNoKey(t, p, body)
	}
	for _, p := range []string{"/healthz", "/ready", "/metrics"} {
		if code, body, _ := get(t, c, base+p); code != http.StatusOK {
			t.Errorf("%s from %s = %d %s, want 200", p, ip, code, body)
		}
	}
}

func TestPprofFromLoopback(t *testing.T) {
	s := newServer(t, Config{})
	base := serveLoopback(t, s)
	c := newClient(t)
	code, body, _ := get(t, c, base+"/debug/pprof/")
	if code != http.StatusOK || !strings.Contains(string(body), "goroutine") {
		t.Fatalf("/debug/pprof/ = %d %.200s", code, body)
	}
	if code, _, _ := get(t, c, base+"/debug/pprof/heap?debug=1"); code != http.StatusOK {
		t.Fatalf("/debug/pprof/heap = %d", code)
	}
	// Without sources the secrets and SDS views are not routed.
	for _, p := range []string{"/debug/secrets", "/debug/config_dump", "/debug/sds"} {
		if code, _, _ := get(t, c, base+p); code != http.StatusNotFound {
			t.Errorf("%s without a source = %d, want 404", p, code)
		}
	}
}
