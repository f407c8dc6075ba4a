package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// TestFloorAnswersEnvoyLikeClient checks that the floor speaks enough
// SDS for the Envoy-like client: a stream's first request is answered
// with the fixed response, which validates, and so is a fetch.
func TestFloorAnswersEnvoyLikeClient(t *testing.T) {
	leaf := testpki.NewRoot(t, "floor root").IssueLeaf(t, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/a/sa/b"}})
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	sec, err := anypb.New(&tlsv3.Secret{Name: sdstest.CertName, Type: &tlsv3.Secret_TlsCertificate{
		TlsCertificate: &tlsv3.TlsCertificate{CertificateChain: inline(leaf.ChainPEM), PrivateKey: inline(leaf.KeyPEM)}}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := proto.Marshal(&discoveryv3.DiscoveryResponse{VersionInfo: "v1", Nonce: "n1", TypeUrl: resource.SecretType, Resources: []*anypb.Any{sec}})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "fl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	socket := filepath.Join(dir, "s")
	lis, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	gs := newServer(resp)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	t.Cleanup(func() {
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := sdstest.Dial(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := sdstest.OpenStream(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Request(sdstest.CertName); err != nil {
		t.Fatal(err)
	}
	got, err := st.Recv(ctx)
	if err != nil {
		t.Fatalf("stream response: %v", err)
	}
	if got.Version != "v1" || got.Secret(sdstest.CertName) == nil {
		t.Fatalf("stream response version %q names %v, want v1 with %q", got.Version, got.Names(), sdstest.CertName)
	}
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}
	f, err := sdstest.Fetch(ctx, conn, []string{sdstest.CertName})
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if f.Secret(sdstest.CertName) == nil {
		t.Fatalf("fetch names %v, want %q", f.Names(), sdstest.CertName)
	}
}
