package sdstest

import (
	"context"
	"errors"
	"fmt"
	"sync"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// DeltaResponse is a decoded delta response.
type DeltaResponse struct {
	// SystemVersion is the response's system_version_info.
	SystemVersion string
	// Nonce is the response's nonce.
	Nonce string
	// Secrets are the decoded, validated resources in response order.
	Secrets []*tlsv3.Secret
	// Versions maps each resource's name to its version.
	Versions map[string]string
	// Removed lists removed_resources.
	Removed []string
	// Raw is the response as received.
	Raw *discoveryv3.DeltaDiscoveryResponse
}

// Names returns the names of the secrets in response order.
func (r *DeltaResponse) Names() []string { return names(r.Secrets) }

// Secret returns the secret named name, or nil.
func (r *DeltaResponse) Secret(name string) *tlsv3.Secret { return secretsByName(r.Secrets)[name] }

func decodeDeltaResponse(raw *discoveryv3.DeltaDiscoveryResponse) (*DeltaResponse, error) {
	resp := &DeltaResponse{
		SystemVersion: raw.GetSystemVersionInfo(),
		Nonce:         raw.GetNonce(),
		Versions:      map[string]string{},
		Removed:       raw.GetRemovedResources(),
		Raw:           raw,
	}
	var errs []error
	for _, r := range raw.GetResources() {
		sec, err := decodeSecret(r.GetResource())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if sec.GetName() != r.GetName() {
			errs = append(errs, fmt.Errorf("delta resource %q holds secret %q", r.GetName(), sec.GetName()))
			continue
		}
		resp.Secrets = append(resp.Secrets, sec)
		resp.Versions[r.GetName()] = r.GetVersion()
	}
	return resp, errors.Join(errs...)
}

// DeltaStream is a DeltaSecrets stream that behaves like Envoy: the first
// request carries the node and type URL; ACK and NACK name the nonce of
// the last response received.
//
// Recv may run in one goroutine while another sends; the sending methods
// serialize among themselves. Call Close, or cancel the context given to
// OpenDeltaStream, to release the stream.
type DeltaStream struct {
	stream secretv3.SecretDiscoveryService_DeltaSecretsClient
	opts   options
	recv   *receiver[discoveryv3.DeltaDiscoveryResponse]

	mu        sync.Mutex
	sentFirst bool
	lastNonce string
}

// OpenDeltaStream opens a DeltaSecrets stream on conn. It sends nothing
// until Subscribe.
func OpenDeltaStream(ctx context.Context, conn grpc.ClientConnInterface, opts ...Option) (*DeltaStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := secretv3.NewSecretDiscoveryServiceClient(conn).DeltaSecrets(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open sds delta stream: %w", err)
	}
	return &DeltaStream{stream: st, opts: newOptions(opts), recv: startReceiver(ctx, cancel, st.Recv)}, nil
}

// Subscribe adds names to the stream's subscriptions.
func (s *DeltaStream) Subscribe(names ...string) error {
	return s.send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: names})
}

// Unsubscribe removes names from the stream's subscriptions.
func (s *DeltaStream) Unsubscribe(names ...string) error {
	return s.send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesUnsubscribe: names})
}

// ACK accepts the last response received.
func (s *DeltaStream) ACK() error {
	return s.ackOrNack(nil)
}

// NACK rejects the last response received with message.
func (s *DeltaStream) NACK(message string) error {
	return s.ackOrNack(&rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: message})
}

func (s *DeltaStream) ackOrNack(detail *rpcstatus.Status) error {
	s.mu.Lock()
	nonce := s.lastNonce
	s.mu.Unlock()
	if nonce == "" {
		return errors.New("delta ack: no response received yet")
	}
	return s.send(&discoveryv3.DeltaDiscoveryRequest{ResponseNonce: nonce, ErrorDetail: detail})
}

// Send sends req as it is, for protocol tests.
func (s *DeltaStream) Send(req *discoveryv3.DeltaDiscoveryRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stream.Send(req); err != nil {
		return fmt.Errorf("send sds delta request: %w", err)
	}
	return nil
}

func (s *DeltaStream) send(req *discoveryv3.DeltaDiscoveryRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	req.TypeUrl = s.opts.typeURL
	if !s.sentFirst {
		req.Node = s.opts.node
	}
	if err := s.stream.Send(req); err != nil {
		return fmt.Errorf("send sds delta request: %w", err)
	}
	s.sentFirst = true
	return nil
}

// Recv waits for the next response or until ctx is done, decoding and
// validating every secret as Stream.Recv does.
func (s *DeltaStream) Recv(ctx context.Context) (*DeltaResponse, error) {
	raw, err := s.recv.next(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.lastNonce = raw.GetNonce()
	s.mu.Unlock()
	resp, err := decodeDeltaResponse(raw)
	if err != nil {
		return resp, fmt.Errorf("sds delta response %s: %w", raw.GetNonce(), err)
	}
	return resp, nil
}

// Close ends the stream and waits for its receiving goroutine.
func (s *DeltaStream) Close() { s.recv.close() }
