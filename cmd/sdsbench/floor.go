package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// floorPkg is the floor server's package, built when -floor is not given.
const floorPkg = "github.com/sdsagent/sdsagent/cmd/sdsbench/floor"

// floorProc is a running floor server (cmd/sdsbench/floor).
type floorProc struct {
	*proc
	socket string
}

// floorBinary returns the floor server's binary: -floor's, or one built
// into the temp dir with `go build` (sdsbench runs from the module).
func (b *bencher) floorBinary(ctx context.Context) (string, error) {
	if b.p.floor != "" {
		return b.p.floor, nil
	}
	if b.floorBin != "" {
		return b.floorBin, nil
	}
	bin := filepath.Join(b.tmp, "sdsfloor")
	out, err := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, floorPkg).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build the floor server (or pass -floor, as `make bench` does): %w\n%s", err, out)
	}
	b.floorBin = bin
	return bin, nil
}

// startFloor starts the floor server serving a fixed "default" response
// and waits until it answers a stream.
func (b *bencher) startFloor(ctx context.Context) (*floorProc, error) {
	bin, err := b.floorBinary(ctx)
	if err != nil {
		return nil, err
	}
	b.seq++
	respFile := filepath.Join(b.tmp, fmt.Sprintf("floor%d.resp", b.seq))
	resp, err := floorResponse()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(respFile, resp, 0o600); err != nil {
		return nil, err
	}
	socket := filepath.Join(b.tmp, fmt.Sprintf("f%d.sock", b.seq))
	p, _, err := startProc(ctx, fmt.Sprintf("floor #%d", b.seq), bin, nil, "-socket", socket, "-response", respFile)
	if err != nil {
		return nil, err
	}
	f := &floorProc{proc: p, socket: socket}
	rctx, cancel := context.WithTimeout(p.ctx, stepLimit)
	defer cancel()
	conn, err := dial(rctx, socket)
	if err == nil {
		var set *streamSet
		if set, err = openStreams(rctx, conns1(conn), 1); err == nil {
			set.close()
		}
		_ = conn.Close()
	}
	if err != nil {
		p.kill()
		return nil, p.failure(err)
	}
	return f, nil
}

// floorResponse returns a marshalled SotW response carrying a "default"
// TLS certificate (a self-signed ECDSA P-256 leaf with a SPIFFE ID and
// its key), about the size of the agent's.
func floorResponse() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	id, _ := url.Parse("spiffe://cluster.local/ns/default/sa/floor")
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{Organization: []string{"sdsbench floor"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	sec, err := anypb.New(&tlsv3.Secret{
		Name: sdstest.CertName,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{
				InlineBytes: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}},
			PrivateKey: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{
				InlineBytes: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})}},
		}},
	})
	if err != nil {
		return nil, err
	}
	return proto.Marshal(&discoveryv3.DiscoveryResponse{
		VersionInfo: "floor-1",
		Nonce:       "1",
		TypeUrl:     resource.SecretType,
		Resources:   []*anypb.Any{sec},
	})
}
