package caapi

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	securityapi "istio.io/api/security/v1alpha1"
)

func TestWireMatchesIstioAPI(t *testing.T) {
	md, err := structpb.NewStruct(map[string]any{"ClusterID": "Kubernetes"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		ours  *CertificateRequest
		istio *securityapi.IstioCertificateRequest
	}{
		{"empty", &CertificateRequest{}, &securityapi.IstioCertificateRequest{}},
		{"csr and ttl", &CertificateRequest{Csr: "-----BEGIN CERTIFICATE REQUEST-----\n", ValidityDuration: 86400},
			&securityapi.IstioCertificateRequest{Csr: "-----BEGIN CERTIFICATE REQUEST-----\n", ValidityDuration: 86400}},
		{"negative ttl", &CertificateRequest{ValidityDuration: -1}, &securityapi.IstioCertificateRequest{ValidityDuration: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := &securityapi.IstioCertificateRequest{}
			if err := proto.Unmarshal(tt.ours.Marshal(), got); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, tt.istio) {
				t.Errorf("istio reads %v, want %v", got, tt.istio)
			}
			// What Istio's agent sends, metadata included, reads back.
			withMD := proto.CloneOf(tt.istio)
			withMD.Metadata = md
			b, err := proto.Marshal(withMD)
			if err != nil {
				t.Fatal(err)
			}
			var back CertificateRequest
			if err := back.Unmarshal(b); err != nil {
				t.Fatal(err)
			}
			if back != *tt.ours {
				t.Errorf("read %+v from istio's encoding, want %+v", back, *tt.ours)
			}
		})
	}

	chain := []string{"leaf", "", "root"}
	b, err := proto.Marshal(&securityapi.IstioCertificateResponse{CertChain: chain})
	if err != nil {
		t.Fatal(err)
	}
	var resp CertificateResponse
	if err := resp.Unmarshal(b); err != nil || !slices.Equal(resp.CertChain, chain) {
		t.Fatalf("response = %q, %v; want %q", resp.CertChain, err, chain)
	}
	got := &securityapi.IstioCertificateResponse{}
	if err := proto.Unmarshal(resp.Marshal(), got); err != nil || !slices.Equal(got.GetCertChain(), chain) {
		t.Fatalf("istio reads %q, %v; want %q", got.GetCertChain(), err, chain)
	}
}

func TestUnmarshalMalformed(t *testing.T) {
	for _, b := range [][]byte{{0x0a}, {0x0a, 0x05, 'a'}, {0x18}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}} {
		if err := new(CertificateRequest).Unmarshal(b); err == nil {
			t.Errorf("request %x: no error", b)
		}
		if err := new(CertificateResponse).Unmarshal(b); err == nil {
			t.Errorf("response %x: no error", b)
		}
	}
}

// istioCA answers with istio.io/api's generated server.
type istioCA struct {
	securityapi.UnimplementedIstioCertificateServiceServer
	got chan *securityapi.IstioCertificateRequest
}

func (s *istioCA) CreateCertificate(_ context.Context, req *securityapi.IstioCertificateRequest) (*securityapi.IstioCertificateResponse, error) {
	s.got <- req
	return &securityapi.IstioCertificateResponse{CertChain: []string{"leaf", "root"}}, nil
}

// ourCA answers with Register.
type ourCA struct{ got chan *CertificateRequest }

func (s *ourCA) CreateCertificate(_ context.Context, req *CertificateRequest) (*CertificateResponse, error) {
	s.got <- req
	if req.Csr == "refuse" {
		return nil, status.Error(codes.InvalidArgument, "refused")
	}
	return &CertificateResponse{CertChain: []string{"leaf", "root"}}, nil
}

func serve(t *testing.T, srv *grpc.Server) *grpc.ClientConn {
	t.Helper()
	dir, err := os.MkdirTemp("", "ca")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	lis, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Error(err)
		}
	})
	cc, err := grpc.NewClient("unix://"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestClientAgainstIstioServer: CreateCertificate talks to a server built
// from istio.io/api.
func TestClientAgainstIstioServer(t *testing.T) {
	ca := &istioCA{got: make(chan *securityapi.IstioCertificateRequest, 1)}
	srv := grpc.NewServer()
	securityapi.RegisterIstioCertificateServiceServer(srv, ca)
	cc := serve(t, srv)
	resp, err := CreateCertificate(context.Background(), cc, &CertificateRequest{Csr: "csr", ValidityDuration: 3600})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(resp.GetCertChain(), []string{"leaf", "root"}) {
		t.Errorf("chain = %q", resp.GetCertChain())
	}
	if req := <-ca.got; req.GetCsr() != "csr" || req.GetValidityDuration() != 3600 {
		t.Errorf("server got %v", req)
	}
}

// TestServerAgainstIstioClient: Register answers istio.io/api's client,
// and status errors reach it unchanged.
func TestServerAgainstIstioClient(t *testing.T) {
	ca := &ourCA{got: make(chan *CertificateRequest, 2)}
	srv := grpc.NewServer(ServerOption())
	Register(srv, ca)
	client := securityapi.NewIstioCertificateServiceClient(serve(t, srv))
	md, _ := structpb.NewStruct(map[string]any{"ClusterID": "c1"})
	resp, err := client.CreateCertificate(context.Background(), &securityapi.IstioCertificateRequest{Csr: "csr", ValidityDuration: 60, Metadata: md})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(resp.GetCertChain(), []string{"leaf", "root"}) {
		t.Errorf("chain = %q", resp.GetCertChain())
	}
	if req := <-ca.got; *req != (CertificateRequest{Csr: "csr", ValidityDuration: 60}) {
		t.Errorf("server got %+v", *req)
	}
	_, err = client.CreateCertificate(context.Background(), &securityapi.IstioCertificateRequest{Csr: "refuse"})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("refusal = %v, want InvalidArgument", err)
	}
}
