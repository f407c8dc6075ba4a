package sdstest

import (
	"context"
	"fmt"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
)

// Fetch calls FetchSecrets for names and decodes and validates the
// answer. gRPC errors are returned unwrapped, so status.Code works on them.
func Fetch(ctx context.Context, conn grpc.ClientConnInterface, names []string, opts ...Option) (*Response, error) {
	o := newOptions(opts)
	raw, err := secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{
		VersionInfo:   o.version,
		Node:          o.node,
		ResourceNames: names,
		TypeUrl:       o.typeURL,
	})
	if err != nil {
		return nil, err
	}
	resp, err := decodeResponse(raw)
	if err != nil {
		return resp, fmt.Errorf("fetch response: %w", err)
	}
	return resp, nil
}
