package sds

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// secretCache is the cachev3.Cache the xDS server reads. It wraps a
// LinearCache of Secret resources and fixes what does not fit SDS:
//
//   - A state-of-the-world request whose version_info is empty or from
//     another process makes LinearCache answer at once, even when none of
//     the requested secrets exists: an empty response, which Envoy NACKs
//     ("Missing SDS resources"). CreateWatch hands LinearCache a copy of
//     such a request carrying this cache's version prefix, so it answers
//     only with requested secrets that exist, and otherwise waits for them.
//     The subscription the server tracks already says which secrets the
//     stream has been sent, so nothing is lost by hiding the version.
//   - No subscription is treated as wildcard: a stream only ever receives
//     names it asked for ("*" is just an unknown name).
//   - LinearCache does not implement Fetch; Fetch answers from a copy of
//     the resources kept here.
//
// It is safe for concurrent use.
type secretCache struct {
	linear *cachev3.LinearCache
	prefix string

	mu        sync.RWMutex
	resources map[string]*tlsv3.Secret
	// changedAt is the update sequence number at which each name last
	// changed (set or deleted); Fetch derives its versions from it.
	changedAt map[string]uint64
	seq       uint64
}

var _ cachev3.Cache = (*secretCache)(nil)

func newSecretCache(prefix string, logger xdsLogger) *secretCache {
	return &secretCache{
		linear: cachev3.NewLinearCache(resource.SecretType,
			cachev3.WithVersionPrefix(prefix),
			cachev3.WithLogger(logger),
		),
		prefix:    prefix,
		resources: map[string]*tlsv3.Secret{},
		changedAt: map[string]uint64{},
	}
}

// apply sets and deletes secrets in one cache version, notifying the
// watches of the names concerned. Deleting a name the cache does not hold
// is a no-op.
func (c *secretCache) apply(set map[string]*tlsv3.Secret, del []string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	del = slices.DeleteFunc(slices.Clone(del), func(name string) bool {
		_, ok := c.resources[name]
		return !ok
	})
	if len(set) == 0 && len(del) == 0 {
		return nil
	}
	c.seq++
	update := make(map[string]types.Resource, len(set))
	for name, sec := range set {
		c.resources[name] = sec
		c.changedAt[name] = c.seq
		update[name] = sec
	}
	for _, name := range del {
		delete(c.resources, name)
		c.changedAt[name] = c.seq
	}
	if err := c.linear.UpdateResources(update, del); err != nil {
		return fmt.Errorf("update secret cache: %w", err)
	}
	return nil
}

// versions returns the version at which each served secret last changed;
// it is the version LinearCache gave it (both count one per apply).
func (c *secretCache) versions() map[string]string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[string]string, len(c.resources))
	for name := range c.resources {
		out[name] = c.prefix + strconv.FormatUint(c.changedAt[name], 10)
	}
	return out
}

// CreateWatch implements cachev3.ConfigWatcher for state of the world.
func (c *secretCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, out chan cachev3.Response) (func(), error) {
	if !strings.HasPrefix(req.GetVersionInfo(), c.prefix) {
		req = proto.CloneOf(req)
		req.VersionInfo = c.prefix
	}
	return c.linear.CreateWatch(req, explicitNames{sub}, out)
}

// CreateDeltaWatch implements cachev3.ConfigWatcher for delta.
func (c *secretCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, out chan cachev3.DeltaResponse) (func(), error) {
	return c.linear.CreateDeltaWatch(req, explicitNames{sub}, out)
}

// Fetch implements cachev3.ConfigFetcher. It answers with the requested
// secrets that exist, NotFound if none does, and, as go-control-plane's
// SnapshotCache does, a types.SkipFetchError when the request already
// carries the current version of the requested names. That version
// changes whenever one of those names is set or deleted.
func (c *secretCache) Fetch(_ context.Context, req *cachev3.Request) (cachev3.Response, error) {
	names := dedupe(req.GetResourceNames())
	if len(names) == 0 {
		return nil, status.Error(codes.InvalidArgument, "fetch secrets: no resource names requested")
	}
	c.mu.RLock()
	var latest uint64
	found := make([]*tlsv3.Secret, 0, len(names))
	for _, name := range names {
		latest = max(latest, c.changedAt[name])
		if sec, ok := c.resources[name]; ok {
			found = append(found, sec)
		}
	}
	c.mu.RUnlock()
	if len(found) == 0 {
		return nil, status.Errorf(codes.NotFound, "fetch secrets: none of the requested secrets exists yet: %s", strings.Join(names, ", "))
	}
	version := c.prefix + strconv.FormatUint(latest, 10)
	if req.GetVersionInfo() == version {
		return nil, &types.SkipFetchError{}
	}
	resp := &discoveryv3.DiscoveryResponse{
		VersionInfo: version,
		TypeUrl:     resource.SecretType,
		Resources:   make([]*anypb.Any, 0, len(found)),
	}
	returned := make(map[string]string, len(found))
	for _, sec := range found {
		b, err := cachev3.MarshalResource(sec)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "fetch secrets: marshal %s: %v", sec.GetName(), err)
		}
		resp.Resources = append(resp.Resources, &anypb.Any{TypeUrl: resource.SecretType, Value: b})
		returned[sec.GetName()] = version
	}
	return &cachev3.PassthroughResponse{Request: req, DiscoveryResponse: resp, ReturnedResources: returned}, nil
}

// explicitNames hides wildcard subscriptions from LinearCache, so that a
// stream only receives the names it listed.
type explicitNames struct {
	cachev3.Subscription
}

// IsWildcard reports false: SDS never serves "every secret".
func (explicitNames) IsWildcard() bool { return false }

// dedupe returns names without duplicates, in first-seen order.
func dedupe(names []string) []string {
	out := make([]string, 0, len(names))
	seen := make(map[string]struct{}, len(names))
	for _, n := range names {
		if _, ok := seen[n]; !ok {
			seen[n] = struct{}{}
			out = append(out, n)
		}
	}
	return out
}
