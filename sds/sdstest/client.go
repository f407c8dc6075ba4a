// Package sdstest is an Envoy-like SDS client for tests, end-to-end checks
// and load tools: it dials an SDS server on a Unix socket, opens state of
// the world and delta streams that request, ACK and NACK as Envoy does,
// fetches, validates every secret it receives, and can prove that two
// served identities complete a mutual TLS handshake.
//
// Functions take a context and return errors; none of them needs a
// *testing.T.
package sdstest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
)

// Node identity sent by default, shaped like an Istio sidecar's.
const (
	// DefaultNodeID is the node.id of the first request.
	DefaultNodeID = "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local"
	// DefaultNodeCluster is the node.cluster of the first request.
	DefaultNodeCluster = "pod.ns"
)

// DefaultNode returns a new node with DefaultNodeID and DefaultNodeCluster.
func DefaultNode() *corev3.Node {
	return &corev3.Node{Id: DefaultNodeID, Cluster: DefaultNodeCluster}
}

// Dial connects to the SDS server listening on the Unix socket
// socketPath and waits until the connection is ready or ctx is done.
// opts are appended to the defaults (insecure transport, quick reconnect).
// The caller closes the returned connection.
func Dial(ctx context.Context, socketPath string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	target := "unix:" + socketPath
	if filepath.IsAbs(socketPath) {
		target = "unix://" + socketPath
	}
	bc := backoff.DefaultConfig
	bc.BaseDelay, bc.MaxDelay = 50*time.Millisecond, 2*time.Second
	all := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bc, MinConnectTimeout: 5 * time.Second}),
	}, opts...)
	conn, err := grpc.NewClient(target, all...)
	if err != nil {
		return nil, fmt.Errorf("dial sds %s: %w", socketPath, err)
	}
	conn.Connect()
	for {
		state := conn.GetState()
		if state == connectivity.Ready {
			return conn, nil
		}
		if !conn.WaitForStateChange(ctx, state) {
			_ = conn.Close()
			return nil, fmt.Errorf("dial sds %s: last state %s: %w", socketPath, state, ctx.Err())
		}
	}
}

// Option changes what a stream or fetch sends.
type Option func(*options)

type options struct {
	node    *corev3.Node
	typeURL string
	version string
}

func newOptions(opts []Option) options {
	o := options{node: DefaultNode(), typeURL: resource.SecretType}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithNode sets the node of the first request; nil sends none.
func WithNode(node *corev3.Node) Option { return func(o *options) { o.node = node } }

// WithTypeURL sets the type URL of every request (default the Secret type).
func WithTypeURL(typeURL string) Option { return func(o *options) { o.typeURL = typeURL } }

// WithVersion sets the version_info of a Fetch request.
func WithVersion(version string) Option { return func(o *options) { o.version = version } }

// decodeSecret decodes one Any into a Secret and validates it.
func decodeSecret(a *anypb.Any) (*tlsv3.Secret, error) {
	if a.GetTypeUrl() != resource.SecretType {
		return nil, fmt.Errorf("decode secret: unexpected type url %q", a.GetTypeUrl())
	}
	sec := &tlsv3.Secret{}
	if err := a.UnmarshalTo(sec); err != nil {
		return nil, fmt.Errorf("decode secret: %w", err)
	}
	if err := validateSecret(sec); err != nil {
		return nil, err
	}
	return sec, nil
}

// validateSecret runs the proto's validation and checks the secret names
// itself and carries one of the two kinds SDS serves here.
func validateSecret(sec *tlsv3.Secret) error {
	if err := sec.ValidateAll(); err != nil {
		return fmt.Errorf("invalid secret %q: %w", sec.GetName(), err)
	}
	if sec.GetName() == "" {
		return errors.New("invalid secret: empty name")
	}
	switch {
	case sec.GetTlsCertificate() != nil:
		tc := sec.GetTlsCertificate()
		if len(tc.GetCertificateChain().GetInlineBytes()) == 0 || len(tc.GetPrivateKey().GetInlineBytes()) == 0 {
			return fmt.Errorf("invalid secret %q: tls certificate without inline chain and key", sec.GetName())
		}
	case sec.GetValidationContext() != nil:
		if _, spiffe, err := SPIFFEValidatorConfig(sec); err != nil {
			return fmt.Errorf("invalid secret: %w", err)
		} else if spiffe {
			if _, err := TrustDomainRoots(sec); err != nil {
				return fmt.Errorf("invalid secret: %w", err)
			}
			break
		}
		if len(sec.GetValidationContext().GetTrustedCa().GetInlineBytes()) == 0 {
			return fmt.Errorf("invalid secret %q: validation context without inline trusted ca", sec.GetName())
		}
	default:
		return fmt.Errorf("invalid secret %q: neither tls certificate nor validation context", sec.GetName())
	}
	return nil
}

// secretsByName indexes secrets by name.
func secretsByName(secrets []*tlsv3.Secret) map[string]*tlsv3.Secret {
	m := make(map[string]*tlsv3.Secret, len(secrets))
	for _, s := range secrets {
		m[s.GetName()] = s
	}
	return m
}

// names returns the secrets' names in order.
func names(secrets []*tlsv3.Secret) []string {
	out := make([]string, len(secrets))
	for i, s := range secrets {
		out[i] = s.GetName()
	}
	return out
}
