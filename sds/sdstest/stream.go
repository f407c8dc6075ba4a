package sdstest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Response is a decoded state-of-the-world (or fetch) response.
type Response struct {
	// Version is the response's version_info.
	Version string
	// Nonce is the response's nonce (empty for a fetch).
	Nonce string
	// Secrets are the decoded, validated resources in response order.
	Secrets []*tlsv3.Secret
	// Raw is the response as received.
	Raw *discoveryv3.DiscoveryResponse
}

// Names returns the names of the secrets in response order.
func (r *Response) Names() []string { return names(r.Secrets) }

// Secret returns the secret named name, or nil.
func (r *Response) Secret(name string) *tlsv3.Secret { return secretsByName(r.Secrets)[name] }

func decodeResponse(raw *discoveryv3.DiscoveryResponse) (*Response, error) {
	resp := &Response{Version: raw.GetVersionInfo(), Nonce: raw.GetNonce(), Raw: raw}
	var errs []error
	for _, a := range raw.GetResources() {
		sec, err := decodeSecret(a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		resp.Secrets = append(resp.Secrets, sec)
	}
	return resp, errors.Join(errs...)
}

// Stream is a StreamSecrets (state of the world) stream that behaves like
// Envoy: its first request carries the node and type URL, later ones the
// last accepted version and the nonce of the last response received.
//
// Recv may run in one goroutine while another sends; the sending methods
// (Request, ACK, NACK, Send) serialize among themselves. Call Close, or
// cancel the context given to OpenStream, to release the stream.
type Stream struct {
	stream secretv3.SecretDiscoveryService_StreamSecretsClient
	opts   options
	recv   *receiver[discoveryv3.DiscoveryResponse]

	mu        sync.Mutex
	sentFirst bool
	names     []string
	acked     string // last accepted version
	lastVer   string // version of the last response received
	lastNonce string // nonce of the last response received
}

// OpenStream opens a StreamSecrets stream on conn. It sends nothing until
// Request.
func OpenStream(ctx context.Context, conn grpc.ClientConnInterface, opts ...Option) (*Stream, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open sds stream: %w", err)
	}
	return &Stream{stream: st, opts: newOptions(opts), recv: startReceiver(ctx, cancel, st.Recv)}, nil
}

// Request asks for names, replacing the previous set, as Envoy does when
// its subscriptions change.
func (s *Stream) Request(names ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.names = slices.Clone(names)
	return s.sendLocked(s.acked, nil)
}

// ACK accepts the last response received.
func (s *Stream) ACK() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastNonce == "" {
		return errors.New("ack: no response received yet")
	}
	s.acked = s.lastVer
	return s.sendLocked(s.acked, nil)
}

// NACK rejects the last response received with message, keeping the
// previously accepted version, as Envoy does.
func (s *Stream) NACK(message string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastNonce == "" {
		return errors.New("nack: no response received yet")
	}
	return s.sendLocked(s.acked, &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: message})
}

// Send sends req as it is, without touching the stream's state. It is for
// protocol tests that need requests Envoy would not send.
func (s *Stream) Send(req *discoveryv3.DiscoveryRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stream.Send(req); err != nil {
		return fmt.Errorf("send sds request: %w", err)
	}
	return nil
}

func (s *Stream) sendLocked(version string, detail *rpcstatus.Status) error {
	req := &discoveryv3.DiscoveryRequest{
		VersionInfo:   version,
		ResourceNames: slices.Clone(s.names),
		TypeUrl:       s.opts.typeURL,
		ResponseNonce: s.lastNonce,
		ErrorDetail:   detail,
	}
	if !s.sentFirst {
		req.Node = s.opts.node
	}
	if err := s.stream.Send(req); err != nil {
		return fmt.Errorf("send sds request: %w", err)
	}
	s.sentFirst = true
	return nil
}

// Recv waits for the next response or until ctx is done. It decodes and
// validates every secret; if one is invalid it returns the response with
// the valid ones and an error, and the response still counts as the last
// one received, so the caller can NACK it. When the stream has ended it
// returns the stream's error (io.EOF after a clean end).
func (s *Stream) Recv(ctx context.Context) (*Response, error) {
	raw, err := s.recv.next(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.lastVer, s.lastNonce = raw.GetVersionInfo(), raw.GetNonce()
	s.mu.Unlock()
	resp, err := decodeResponse(raw)
	if err != nil {
		return resp, fmt.Errorf("sds response %s: %w", raw.GetNonce(), err)
	}
	return resp, nil
}

// Close ends the stream and waits for its receiving goroutine.
func (s *Stream) Close() { s.recv.close() }
