package sds

import (
	"bytes"
	"cmp"
	"context"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

const (
	def  = cache.WorkloadCertName
	root = cache.RootCertName
)

func sorted(names []string) []string {
	out := slices.Clone(names)
	cache.SortNames(out)
	return out
}

// checkLeaf fails unless resp carries default with exactly l's chain and key.
func checkLeaf(t *testing.T, secretOf func(string) *tlsv3.Secret, l *testpki.Leaf) {
	t.Helper()
	sec := secretOf(def)
	if sec == nil {
		t.Fatalf("no %s in response", def)
	}
	tc := sec.GetTlsCertificate()
	if !bytes.Equal(tc.GetCertificateChain().GetInlineBytes(), l.ChainPEM) {
		t.Errorf("%s chain differs from the published one", def)
	}
	if !bytes.Equal(tc.GetPrivateKey().GetInlineBytes(), l.KeyPEM) {
		t.Errorf("%s key differs from the published one", def)
	}
}

func TestSotWRequestResponse(t *testing.T) {
	h := newHarness(t)
	leaf := h.publishAll()
	tests := []struct {
		name    string
		request []string
		want    []string
	}{
		{name: "default only", request: []string{def}, want: []string{def}},
		{name: "roots only", request: []string{root}, want: []string{root}},
		{name: "both", request: []string{root, def}, want: []string{def, root}},
		{name: "duplicates", request: []string{def, def}, want: []string{def}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := h.openStream()
			if err := st.Request(tt.request...); err != nil {
				t.Fatal(err)
			}
			resp := h.recv(st) // Recv already ran ValidateAll on every secret.
			if got := sorted(resp.Names()); !slices.Equal(got, tt.want) {
				t.Fatalf("names = %v, want %v", got, tt.want)
			}
			if !strings.HasPrefix(resp.Version, "sds-") || resp.Nonce == "" {
				t.Errorf("version %q nonce %q: want an sds- version and a nonce", resp.Version, resp.Nonce)
			}
			if slices.Contains(tt.want, def) {
				checkLeaf(t, resp.Secret, leaf)
			}
			if slices.Contains(tt.want, root) {
				got := resp.Secret(root).GetValidationContext().GetTrustedCa().GetInlineBytes()
				if !bytes.Equal(got, h.root.CertPEM) {
					t.Errorf("%s trusted ca differs from the published one", root)
				}
			}
			st.Close()
		})
	}
}

func TestACKIsNotAnswered(t *testing.T) {
	h := newHarness(t)
	h.publishAll()
	st := h.openStream()
	if err := st.Request(def); err != nil {
		t.Fatal(err)
	}
	resp := h.recv(st)
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}
	h.expectQuiet(st)
	info := h.oneStream("ack recorded", func(s StreamInfo) bool { return s.AckedVersion == resp.Version })
	if info.API != apiSotW || info.NodeID != sdstest.DefaultNodeID || !slices.Equal(info.Names, []string{def}) {
		t.Errorf("stream info = %+v", info)
	}
	if got := testutil.ToFloat64(h.metrics.SDSPushes.WithLabelValues(apiSotW)); got != 1 {
		t.Errorf("sotw pushes = %v, want 1", got)
	}
}

func TestRequestBeforeSecretExists(t *testing.T) {
	t.Run("sotw", func(t *testing.T) {
		h := newHarness(t)
		st := h.openStream()
		if err := st.Request(def, root); err != nil {
			t.Fatal(err)
		}
		h.expectQuiet(st) // no empty response
		leaf := h.publishLeaf(spiffeA)
		resp := h.recv(st)
		if got := resp.Names(); !slices.Equal(got, []string{def}) {
			t.Fatalf("names = %v, want [default]", got)
		}
		checkLeaf(t, resp.Secret, leaf)
		if err := st.ACK(); err != nil {
			t.Fatal(err)
		}
		h.publishRoots()
		if got := h.recv(st).Names(); !slices.Equal(got, []string{root}) {
			t.Fatalf("names = %v, want [ROOTCA]", got)
		}
	})
	t.Run("sotw with a version from another process", func(t *testing.T) {
		h := newHarness(t)
		st := h.openStream()
		// Envoy reconnecting after an agent restart sends the version it
		// accepted from the previous agent.
		err := st.Send(&discoveryv3.DiscoveryRequest{
			VersionInfo: "sds-OLDPROCESS-7", Node: sdstest.DefaultNode(),
			ResourceNames: []string{def}, TypeUrl: resource.SecretType,
		})
		if err != nil {
			t.Fatal(err)
		}
		h.expectQuiet(st)
		h.publishLeaf(spiffeA)
		if got := h.recv(st).Names(); !slices.Equal(got, []string{def}) {
			t.Fatalf("names = %v, want [default]", got)
		}
	})
	t.Run("delta", func(t *testing.T) {
		h := newHarness(t)
		st := h.openDelta()
		if err := st.Subscribe(def); err != nil {
			t.Fatal(err)
		}
		h.expectQuietDelta(st)
		leaf := h.publishLeaf(spiffeA)
		resp := h.recvDelta(st)
		if got := resp.Names(); !slices.Equal(got, []string{def}) {
			t.Fatalf("names = %v, want [default]", got)
		}
		checkLeaf(t, resp.Secret, leaf)
	})
}

func TestPushOnChange(t *testing.T) {
	h := newHarness(t)
	h.publishAll()
	sotw := h.openStream()
	if err := sotw.Request(def, root); err != nil {
		t.Fatal(err)
	}
	if got := sorted(h.recv(sotw).Names()); !slices.Equal(got, []string{def, root}) {
		t.Fatalf("sotw names = %v", got)
	}
	if err := sotw.ACK(); err != nil {
		t.Fatal(err)
	}
	delta := h.openDelta()
	if err := delta.Subscribe(def, root); err != nil {
		t.Fatal(err)
	}
	if got := sorted(h.recvDelta(delta).Names()); !slices.Equal(got, []string{def, root}) {
		t.Fatalf("delta names = %v", got)
	}
	if err := delta.ACK(); err != nil {
		t.Fatal(err)
	}

	rotated := h.publishLeaf(spiffeA)

	resp := h.recv(sotw)
	if got := resp.Names(); !slices.Equal(got, []string{def}) {
		t.Fatalf("sotw push names = %v, want only the changed default", got)
	}
	checkLeaf(t, resp.Secret, rotated)
	if err := sotw.ACK(); err != nil {
		t.Fatal(err)
	}
	dresp := h.recvDelta(delta)
	if got := dresp.Names(); !slices.Equal(got, []string{def}) {
		t.Fatalf("delta push names = %v, want only the changed default", got)
	}
	checkLeaf(t, dresp.Secret, rotated)
	if err := delta.ACK(); err != nil {
		t.Fatal(err)
	}
	h.expectQuiet(sotw)
	h.expectQuietDelta(delta)

	// Removing a secret is a delta removal; SotW cannot say it and stays quiet.
	h.store.Update(nil, []string{root})
	dresp = h.recvDelta(delta)
	if len(dresp.Secrets) != 0 || !slices.Equal(dresp.Removed, []string{root}) {
		t.Fatalf("delta after removal: names %v removed %v, want removed [ROOTCA]", dresp.Names(), dresp.Removed)
	}
	h.expectQuiet(sotw)
}

func TestNoPushWithoutChange(t *testing.T) {
	tests := []struct {
		name   string
		update func(h *harness, leaf *testpki.Leaf)
	}{
		{
			name: "identical content republished",
			update: func(h *harness, leaf *testpki.Leaf) {
				h.store.Update([]*cache.Secret{leafSecret(leaf), rootSecret(h.root)}, nil)
			},
		},
		{
			name:   "only another secret changed",
			update: func(*harness, *testpki.Leaf) {},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			leaf := h.publishAll()
			st := h.openStream()
			if err := st.Request(def); err != nil {
				t.Fatal(err)
			}
			h.recv(st)
			if err := st.ACK(); err != nil {
				t.Fatal(err)
			}
			marker := h.openStream()
			if err := marker.Request(root); err != nil {
				t.Fatal(err)
			}
			h.recv(marker)
			if err := marker.ACK(); err != nil {
				t.Fatal(err)
			}

			tt.update(h, leaf)
			// A ROOTCA change after the update: once the marker stream
			// has it, the sync has seen the update too.
			h.store.Update([]*cache.Secret{rootSecret(testpki.NewRoot(t, "other root"))}, nil)
			h.recv(marker)
			h.expectQuiet(st)
			if got := testutil.ToFloat64(h.metrics.SDSPushes.WithLabelValues(apiSotW)); got != 3 {
				t.Errorf("sotw pushes = %v, want 3 (two initial, one marker)", got)
			}
		})
	}
}

func TestUnknownNames(t *testing.T) {
	h := newHarness(t)
	h.publishAll()
	st := h.openStream()
	if err := st.Request(def, "bogus"); err != nil {
		t.Fatal(err)
	}
	if got := h.recv(st).Names(); !slices.Equal(got, []string{def}) {
		t.Fatalf("names = %v, want [default]", got)
	}
	// Asking again on the same stream is neither answered nor logged again.
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}
	if err := st.Request(def, "bogus"); err != nil {
		t.Fatal(err)
	}
	h.expectQuiet(st)
	// Adding ROOTCA gets an answer, which proves the requests before it
	// were processed.
	if err := st.Request(def, "bogus", root); err != nil {
		t.Fatal(err)
	}
	if got := h.recv(st).Names(); !slices.Equal(got, []string{root}) {
		t.Fatalf("names = %v, want [ROOTCA]", got)
	}
	info := h.srv.Streams()[0]
	if !slices.Equal(info.UnknownNames, []string{"bogus"}) || !slices.Equal(info.Names, []string{def, root, "bogus"}) {
		t.Errorf("stream info = %+v", info)
	}
	logged := h.logs.FilterMessage("unknown resource name requested").All()
	if len(logged) != 1 {
		t.Fatalf("logged %d unknown-name warnings, want 1", len(logged))
	}
	fields := logged[0].ContextMap()
	if fields["resource"] != "bogus" || !strings.Contains(fields["reason"].(string), "default, ROOTCA") ||
		fields["node_id"] != sdstest.DefaultNodeID || logged[0].Level != zap.WarnLevel {
		t.Errorf("log entry = %v %v", logged[0].Level, fields)
	}
	if got := testutil.ToFloat64(h.metrics.SDSUnknownNames); got != 1 {
		t.Errorf("unknown names metric = %v, want 1", got)
	}

	// Another stream asking for it counts again: once per stream and name.
	st2 := h.openStream()
	if err := st2.Request("bogus"); err != nil {
		t.Fatal(err)
	}
	h.waitStreams("second stream's unknown name", func(s []StreamInfo) bool {
		return len(s) == 2 && len(s[1].UnknownNames) == 1
	})
	if got := testutil.ToFloat64(h.metrics.SDSUnknownNames); got != 2 {
		t.Errorf("unknown names metric = %v, want 2", got)
	}
}

func TestRequestWithoutServableNames(t *testing.T) {
	tests := []struct {
		name        string
		request     []string
		wantUnknown []string
	}{
		{name: "unknown name", request: []string{"bogus"}, wantUnknown: []string{"bogus"}},
		{name: "explicit wildcard", request: []string{"*"}, wantUnknown: []string{"*"}},
		{name: "no names", request: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.publishAll()
			st := h.openStream()
			if err := st.Request(tt.request...); err != nil {
				t.Fatal(err)
			}
			h.expectQuiet(st)
			info := h.oneStream("request recorded", func(s StreamInfo) bool { return s.NodeID != "" })
			if !slices.Equal(info.UnknownNames, tt.wantUnknown) {
				t.Errorf("unknown names = %v, want %v", info.UnknownNames, tt.wantUnknown)
			}
			// The stream is still open and serves a good request.
			if err := st.Request(def); err != nil {
				t.Fatal(err)
			}
			if got := h.recv(st).Names(); !slices.Equal(got, []string{def}) {
				t.Fatalf("names = %v, want [default]", got)
			}
		})
	}
}

func TestNACK(t *testing.T) {
	t.Run("sotw", func(t *testing.T) {
		h := newHarness(t)
		h.publishAll()
		st := h.openStream()
		if err := st.Request(def); err != nil {
			t.Fatal(err)
		}
		resp := h.recv(st)
		if err := st.NACK("bad certificate"); err != nil {
			t.Fatal(err)
		}
		h.expectQuiet(st) // not re-sent
		info := h.oneStream("nack recorded", func(s StreamInfo) bool { return s.Nacks == 1 })
		if info.LastNack != "bad certificate" || info.AckedVersion != "" {
			t.Errorf("stream info = %+v", info)
		}
		if got := testutil.ToFloat64(h.metrics.SDSNacks); got != 1 {
			t.Errorf("nacks metric = %v, want 1", got)
		}
		logged := h.logs.FilterMessage("nack received").All()
		if len(logged) != 1 {
			t.Fatalf("logged %d nacks, want 1", len(logged))
		}
		want := map[string]any{
			"node_id": sdstest.DefaultNodeID, "nonce": resp.Nonce, "version": "",
			"rejected_version": resp.Version, "error": "bad certificate", "api": apiSotW,
		}
		fields := logged[0].ContextMap()
		for k, v := range want {
			if fields[k] != v {
				t.Errorf("log field %s = %v, want %v", k, fields[k], v)
			}
		}
		if names, _ := fields["names"].([]any); len(names) != 1 || names[0] != def {
			t.Errorf("log field names = %v", fields["names"])
		}
		// A NACK does not stop later pushes.
		rotated := h.publishLeaf(spiffeA)
		checkLeaf(t, h.recv(st).Secret, rotated)
	})
	t.Run("delta", func(t *testing.T) {
		h := newHarness(t)
		h.publishAll()
		st := h.openDelta()
		if err := st.Subscribe(def); err != nil {
			t.Fatal(err)
		}
		h.recvDelta(st)
		if err := st.NACK("bad certificate"); err != nil {
			t.Fatal(err)
		}
		h.expectQuietDelta(st)
		info := h.oneStream("nack recorded", func(s StreamInfo) bool { return s.Nacks == 1 })
		if info.LastNack != "bad certificate" || info.API != apiDelta {
			t.Errorf("stream info = %+v", info)
		}
		if got := testutil.ToFloat64(h.metrics.SDSNacks); got != 1 {
			t.Errorf("nacks metric = %v, want 1", got)
		}
	})
}

func TestStaleNonceIgnored(t *testing.T) {
	h := newHarness(t)
	h.publishAll()
	st := h.openStream()
	if err := st.Request(def); err != nil {
		t.Fatal(err)
	}
	first := h.recv(st)
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}
	// The ACK must arrive before the push, or it is stale itself.
	h.oneStream("ack recorded", func(s StreamInfo) bool { return s.AckedVersion == first.Version })
	h.publishLeaf(spiffeA)
	second := h.recv(st)

	// Requests answering the first response arrive after the second was
	// sent: they are ignored, by the protocol and by the bookkeeping.
	stale := []*discoveryv3.DiscoveryRequest{
		{VersionInfo: first.Version, ResourceNames: []string{def, root}, TypeUrl: resource.SecretType, ResponseNonce: first.Nonce},
		{VersionInfo: first.Version, ResourceNames: []string{def}, TypeUrl: resource.SecretType, ResponseNonce: first.Nonce,
			ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "stale nack"}},
	}
	for _, req := range stale {
		if err := st.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	h.expectQuiet(st) // ROOTCA was asked with a stale nonce: not sent

	// The same request with the current nonce is served.
	err := st.Send(&discoveryv3.DiscoveryRequest{
		VersionInfo: second.Version, ResourceNames: []string{def, root},
		TypeUrl: resource.SecretType, ResponseNonce: second.Nonce,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := h.recv(st).Names(); !slices.Equal(got, []string{root}) {
		t.Fatalf("names = %v, want [ROOTCA]", got)
	}
	// Requests are processed in order, so the stale ones have been seen.
	info := h.srv.Streams()[0]
	if info.Nacks != 0 || info.LastNack != "" || info.AckedVersion != second.Version {
		t.Errorf("stream info after stale requests = %+v", info)
	}
	if got := testutil.ToFloat64(h.metrics.SDSNacks); got != 0 {
		t.Errorf("nacks metric = %v, want 0", got)
	}
	if n := h.logs.FilterMessage("stale nonce ignored").Len(); n != 2 {
		t.Errorf("logged %d stale requests, want 2", n)
	}
}

func TestProtocolErrors(t *testing.T) {
	tests := []struct {
		name    string
		opts    []sdstest.Option
		wantMsg string
	}{
		{name: "no node", opts: []sdstest.Option{sdstest.WithNode(nil)}, wantMsg: "missing node information"},
		{name: "empty node id", opts: []sdstest.Option{sdstest.WithNode(&corev3.Node{Cluster: "c"})}, wantMsg: "missing node information"},
		{name: "wrong type url", opts: []sdstest.Option{sdstest.WithTypeURL(resource.ClusterType)}, wantMsg: resource.ClusterType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.publishAll()
			check := func(err error) {
				t.Helper()
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tt.wantMsg) {
					t.Errorf("stream error = %v, want InvalidArgument mentioning %q", err, tt.wantMsg)
				}
			}
			ctx := h.ctx()

			st := h.openStream(tt.opts...)
			if err := st.Request(def); err != nil {
				t.Fatal(err)
			}
			_, err := st.Recv(ctx)
			check(err)

			dst := h.openDelta(tt.opts...)
			if err := dst.Subscribe(def); err != nil {
				t.Fatal(err)
			}
			_, err = dst.Recv(ctx)
			check(err)

			// FetchSecrets is refused the same way (go-control-plane
			// used to overwrite the type and serve Secrets).
			_, err = sdstest.Fetch(ctx, h.conn, []string{def}, tt.opts...)
			check(err)

			h.waitStreams("rejected streams closed", func(s []StreamInfo) bool { return len(s) == 0 })
			if got := testutil.ToFloat64(h.metrics.SDSPushes.WithLabelValues(apiSotW)); got != 0 {
				t.Errorf("pushes = %v, want 0", got)
			}
		})
	}
}

func TestClientDisconnect(t *testing.T) {
	h := newHarness(t)
	h.publishAll()
	for _, api := range []string{apiSotW, apiDelta} {
		t.Run(api, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if api == apiSotW {
				st, err := sdstest.OpenStream(ctx, h.conn)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				if err := st.Request(def); err != nil {
					t.Fatal(err)
				}
				h.recv(st)
			} else {
				st, err := sdstest.OpenDeltaStream(ctx, h.conn)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				if err := st.Subscribe(def); err != nil {
					t.Fatal(err)
				}
				h.recvDelta(st)
			}
			gauge := h.metrics.SDSStreams.WithLabelValues(api)
			h.waitStreams("stream open", func(s []StreamInfo) bool { return len(s) == 1 })
			if got := testutil.ToFloat64(gauge); got != 1 {
				t.Errorf("%s streams gauge = %v, want 1", api, got)
			}
			cancel()
			h.waitStreams("stream cleaned up", func(s []StreamInfo) bool { return len(s) == 0 })
			if got := testutil.ToFloat64(gauge); got != 0 {
				t.Errorf("%s streams gauge = %v, want 0", api, got)
			}
		})
	}
}

func TestFetch(t *testing.T) {
	t.Run("before any secret exists", func(t *testing.T) {
		h := newHarness(t)
		_, err := sdstest.Fetch(h.ctx(), h.conn, []string{def})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("Fetch = %v, want NotFound", err)
		}
	})

	h := newHarness(t)
	leaf := h.publishAll()
	h.waitServed(def, root)
	current, err := sdstest.Fetch(h.ctx(), h.conn, []string{def})
	if err != nil {
		t.Fatal(err)
	}
	checkLeaf(t, current.Secret, leaf)
	tests := []struct {
		name     string
		names    []string
		opts     []sdstest.Option
		want     []string
		wantCode codes.Code
	}{
		{name: "default", names: []string{def}, want: []string{def}},
		{name: "both", names: []string{def, root}, want: []string{def, root}},
		{name: "unknown left out", names: []string{def, "bogus"}, want: []string{def}},
		{name: "only unknown", names: []string{"bogus"}, wantCode: codes.NotFound},
		{name: "no names", names: nil, wantCode: codes.InvalidArgument},
		{name: "old version", names: []string{def}, opts: []sdstest.Option{sdstest.WithVersion("sds-other-1")}, want: []string{def}},
		// A client that fetches again wants the secrets again, not
		// gRPC Unknown "skip fetch: version up to date".
		{name: "current version", names: []string{def}, opts: []sdstest.Option{sdstest.WithVersion(current.Version)}, want: []string{def}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := sdstest.Fetch(h.ctx(), h.conn, tt.names, tt.opts...)
			if tt.wantCode != codes.OK {
				if status.Code(err) != tt.wantCode {
					t.Fatalf("Fetch = %v, want %v", err, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := sorted(resp.Names()); !slices.Equal(got, tt.want) {
				t.Errorf("names = %v, want %v", got, tt.want)
			}
		})
	}
	if got := testutil.ToFloat64(h.metrics.SDSPushes.WithLabelValues(apiFetch)); got != 6 {
		t.Errorf("fetch pushes = %v, want 6", got)
	}
	if got := testutil.ToFloat64(h.metrics.SDSUnknownNames); got != 2 {
		t.Errorf("unknown names = %v, want 2", got)
	}

	t.Run("rotation changes the version", func(t *testing.T) {
		// The version of default does not move when only ROOTCA changes.
		h.store.Update([]*cache.Secret{rootSecret(testpki.NewRoot(t, "other root"))}, nil)
		rotated := h.publishLeaf(spiffeA)
		// The store publishes before the sync goroutine applies, so wait
		// for the rotation through a stream.
		// A new stream may get the previous default first, then the push.
		st := h.openStream()
		if err := st.Request(def); err != nil {
			t.Fatal(err)
		}
		for {
			got := h.recv(st).Secret(def).GetTlsCertificate().GetCertificateChain().GetInlineBytes()
			if bytes.Equal(got, rotated.ChainPEM) {
				break
			}
			if err := st.ACK(); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := sdstest.Fetch(h.ctx(), h.conn, []string{def}, sdstest.WithVersion(current.Version))
		if err != nil {
			t.Fatal(err)
		}
		if resp.Version == current.Version {
			t.Errorf("version did not change on rotation: %s", resp.Version)
		}
		checkLeaf(t, resp.Secret, rotated)
	})
}

func TestInvalidSecretIsNotServed(t *testing.T) {
	h := newHarness(t)
	leaf := h.publishAll()
	st := h.openStream()
	if err := st.Request(def, root); err != nil {
		t.Fatal(err)
	}
	h.recv(st)
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}

	bad := leafSecret(h.issue(spiffeA))
	bad.PrivateKeyPEM = nil
	h.store.Update([]*cache.Secret{bad}, nil)
	// A later valid change proves the sync got past the bad secret.
	h.store.Update([]*cache.Secret{rootSecret(testpki.NewRoot(t, "other root"))}, nil)
	if got := h.recv(st).Names(); !slices.Equal(got, []string{root}) {
		t.Fatalf("names = %v, want only ROOTCA (the bad default is not served)", got)
	}
	logged := h.logs.FilterMessage("secret rejected, keeping the previous one").All()
	if len(logged) != 1 || logged[0].ContextMap()["resource"] != def {
		t.Fatalf("rejection logs = %v", logged)
	}
	// A new stream still gets the previous, valid default.
	st2 := h.openStream()
	if err := st2.Request(def); err != nil {
		t.Fatal(err)
	}
	checkLeaf(t, h.recv(st2).Secret, leaf)
}

func TestDeltaSubscriptions(t *testing.T) {
	h := newHarness(t)
	h.publishAll()
	st := h.openDelta()
	if err := st.Subscribe(def); err != nil {
		t.Fatal(err)
	}
	if got := h.recvDelta(st).Names(); !slices.Equal(got, []string{def}) {
		t.Fatalf("names = %v, want [default]", got)
	}
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}
	if err := st.Subscribe(root); err != nil {
		t.Fatal(err)
	}
	resp := h.recvDelta(st)
	if got := resp.Names(); !slices.Equal(got, []string{root}) || resp.Versions[root] == "" {
		t.Fatalf("names = %v versions %v, want [ROOTCA] with a version", got, resp.Versions)
	}
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}
	if err := st.Unsubscribe(root); err != nil {
		t.Fatal(err)
	}
	h.oneStream("unsubscribed", func(s StreamInfo) bool { return slices.Equal(s.Names, []string{def}) })
	h.store.Update([]*cache.Secret{rootSecret(testpki.NewRoot(t, "other root"))}, nil)
	h.expectQuietDelta(st)
	info := h.srv.Streams()[0]
	if info.AckedVersion == "" || info.API != apiDelta {
		t.Errorf("stream info = %+v", info)
	}
}

func TestStreams(t *testing.T) {
	h := newHarness(t)
	h.publishAll()
	a, b := h.openStream(), h.openStream()
	d := h.openDelta(sdstest.WithNode(&corev3.Node{Id: "router~1.2.3.4~gw.ns~ns.svc.cluster.local"}))
	for _, st := range []*sdstest.Stream{a, b} {
		if err := st.Request(def); err != nil {
			t.Fatal(err)
		}
		h.recv(st)
	}
	if err := d.Subscribe(root); err != nil {
		t.Fatal(err)
	}
	h.recvDelta(d)
	infos := h.waitStreams("three streams", func(s []StreamInfo) bool { return len(s) == 3 })
	if !slices.IsSortedFunc(infos, func(x, y StreamInfo) int { return cmp.Compare(x.ID, y.ID) }) {
		t.Errorf("streams not sorted by id: %+v", infos)
	}
	apis := map[string]int{}
	for i, info := range infos {
		apis[info.API]++
		if i > 0 && info.ID == infos[i-1].ID {
			t.Errorf("duplicate id %d", info.ID)
		}
		if info.OpenedAt.IsZero() || info.NodeID == "" {
			t.Errorf("stream info = %+v", info)
		}
		if info.API == apiDelta && (info.NodeID != "router~1.2.3.4~gw.ns~ns.svc.cluster.local" || !slices.Equal(info.Names, []string{root})) {
			t.Errorf("delta stream info = %+v", info)
		}
	}
	if apis[apiSotW] != 2 || apis[apiDelta] != 1 {
		t.Errorf("apis = %v", apis)
	}
}

func TestServeStopsOnCancel(t *testing.T) {
	h := newHarness(t)
	h.publishAll()
	st := h.openStream()
	if err := st.Request(def); err != nil {
		t.Fatal(err)
	}
	h.recv(st)
	dst := h.openDelta()
	if err := dst.Subscribe(def); err != nil {
		t.Fatal(err)
	}
	h.recvDelta(dst)

	if err := h.stop(); err != nil {
		t.Fatalf("Serve = %v, want nil", err)
	}
	if _, err := st.Recv(h.ctx()); err == nil {
		t.Error("sotw stream still open after stop")
	}
	if _, err := dst.Recv(h.ctx()); err == nil {
		t.Error("delta stream still open after stop")
	}
	if n := len(h.srv.Streams()); n != 0 {
		t.Errorf("%d streams after stop", n)
	}
	for _, api := range []string{apiSotW, apiDelta} {
		if got := testutil.ToFloat64(h.metrics.SDSStreams.WithLabelValues(api)); got != 0 {
			t.Errorf("%s gauge = %v after stop", api, got)
		}
	}
}

func TestServeTwiceConcurrently(t *testing.T) {
	h := newHarness(t)
	lis, err := Listen(h.socket+"2", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Serve(context.Background(), lis); err == nil {
		t.Fatal("second Serve succeeded")
	}
}

func TestNewDefaults(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without source succeeded")
	}
	cfg := Config{Source: testSource{}}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.SocketPath != DefaultSocketPath || s.cfg.SocketMode != 0o660 || s.cfg.Logger == nil || s.cfg.Metrics == nil {
		t.Errorf("defaults not applied: %+v", s.cfg)
	}
	if cfg.SocketPath != "" || cfg.Logger != nil {
		t.Errorf("caller's config modified: %+v", cfg)
	}
	if s.cfg.Clock == nil || s.cfg.Limits.MaxNamesPerRequest != DefaultMaxNamesPerRequest || s.cfg.Limits.HandshakeTimeout != DefaultHandshakeTimeout {
		t.Errorf("limits or clock defaults not applied: %+v", s.cfg)
	}
	if cfg.Limits != (Limits{}) {
		t.Errorf("caller's limits modified: %+v", cfg.Limits)
	}
}

func TestVersionsMatchWhatStreamsReceive(t *testing.T) {
	h := newHarness(t)
	h.publishAll()
	st := h.openStream()
	if err := st.Request(def); err != nil {
		t.Fatal(err)
	}
	first := h.recv(st)
	if got := h.srv.Versions()[def]; got != first.Version {
		t.Fatalf("Versions()[default] = %q, stream received %q", got, first.Version)
	}
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}
	before := h.srv.Versions()[root]
	h.publishLeaf("spiffe://cluster.local/ns/default/sa/web")
	pushed := h.recv(st)
	v := h.srv.Versions()
	if v[def] != pushed.Version || v[def] == first.Version {
		t.Fatalf("after rotation Versions()[default] = %q, pushed %q, first %q", v[def], pushed.Version, first.Version)
	}
	if v[root] != before {
		t.Fatalf("ROOTCA version moved from %q to %q without a change", before, v[root])
	}
}
