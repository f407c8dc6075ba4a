package sds

import (
	"strings"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/internal/ratelog"
)

// fetch answers a FetchSecrets call with the requested secrets that
// exist, whatever version_info says (a client asking again wants them
// again): NotFound if none does, InvalidArgument for a request that is
// not an SDS request. An expired workload certificate is left out unless
// the request's version says the client has it already.
func (s *Server) fetch(req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	nodeID := ratelog.Cut(req.GetNode().GetId())
	if err := checkRequest(req.GetNode(), nodeRequired, req.GetTypeUrl()); err != nil {
		if s.warn.Allow(nil, "fetch rejected") {
			s.warn.Write("fetch rejected", zap.String("node_id", nodeID), zap.Error(err))
		}
		return nil, err
	}
	if err := s.checkNames(nil, req.GetResourceNames()); err != nil {
		return nil, err
	}
	names := dedupe(req.GetResourceNames())
	if len(names) == 0 {
		return nil, status.Error(codes.InvalidArgument, "fetch secrets: no resource names requested")
	}
	held, _ := s.table.parseVersion(req.GetVersionInfo())
	now := s.cfg.Clock.Now()
	resp := &discoveryv3.DiscoveryResponse{TypeUrl: secretType}
	var latest uint64
	for _, name := range names {
		if err := s.cfg.Source.CheckName(name); err != nil {
			s.cfg.Metrics.SDSUnknownNames.Inc()
			if s.warn.Allow(nil, msgUnknownName) {
				s.warn.Write(msgUnknownName, zap.String("api", apiFetch), zap.String("node_id", nodeID),
					zap.String("resource", ratelog.Cut(name)), zap.String("reason", ratelog.CutN(err.Error(), maxReasonBytes)))
			}
			continue
		}
		e, ok := s.table.get(name)
		if !ok || (e.expired(now) && held < e.seq) {
			continue
		}
		resp.Resources = append(resp.Resources, e.res)
		latest = max(latest, e.seq)
	}
	if len(resp.Resources) == 0 {
		return nil, status.Errorf(codes.NotFound, "fetch secrets: none of the requested secrets exists yet: %s",
			strings.Join(ratelog.CutAll(names), ", "))
	}
	resp.VersionInfo = s.table.version(latest)
	s.pushes[apiFetch].Inc()
	if s.debug.Allow(nil, "fetch answered") {
		s.debug.Write("fetch answered", zap.String("node_id", nodeID),
			zap.Strings("names", ratelog.CutAll(names)), zap.String("version", resp.VersionInfo))
	}
	return resp, nil
}

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
