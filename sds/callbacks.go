package sds

import (
	"context"
	"maps"
	"slices"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"go.uber.org/zap"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/cache"
)

// streamKey identifies a stream as go-control-plane numbers them: the
// state-of-the-world and delta servers count separately.
type streamKey struct {
	api string
	id  int64
}

// streamState is the bookkeeping of one stream. go-control-plane calls a
// stream's callbacks from that stream's goroutine only, so only that
// goroutine writes it; s.mu guards it against readers (Streams).
type streamState struct {
	id       int64
	api      string
	openedAt time.Time

	nodeID     string
	gotRequest bool
	names      []string
	// checked caches Source.CheckName per name: true if servable.
	checked      map[string]bool
	unknown      []string
	ackedVersion string
	nacks        int
	lastNack     string
	// lastNonce and lastVersion describe the last response sent.
	lastNonce   string
	lastVersion string
}

func (st *streamState) snapshot() StreamInfo {
	return StreamInfo{
		ID:           st.id,
		API:          st.api,
		NodeID:       st.nodeID,
		Names:        slices.Clone(st.names),
		UnknownNames: slices.Clone(st.unknown),
		AckedVersion: st.ackedVersion,
		Nacks:        st.nacks,
		LastNack:     st.lastNack,
		OpenedAt:     st.openedAt,
	}
}

// callbacks does the protocol bookkeeping for go-control-plane's server:
// node and type checks, ACK/NACK accounting, unknown names, metrics. Each
// callback runs on a stream goroutine, takes s.mu briefly and never while
// sending.
type callbacks struct {
	s *Server
}

var _ serverv3.Callbacks = callbacks{}

// request is what the bookkeeping needs from a SotW or delta request.
type request struct {
	node        *corev3.Node
	typeURL     string
	version     string // SotW version_info
	nonce       string
	errorDetail *rpcstatus.Status
	// names is the full set (SotW); subscribe and unsubscribe the changes (delta).
	names, subscribe, unsubscribe []string
}

// OnStreamOpen registers a SotW stream.
func (c callbacks) OnStreamOpen(_ context.Context, id int64, _ string) error {
	c.open(streamKey{apiSotW, id})
	return nil
}

// OnDeltaStreamOpen registers a delta stream.
func (c callbacks) OnDeltaStreamOpen(_ context.Context, id int64, _ string) error {
	c.open(streamKey{apiDelta, id})
	return nil
}

// OnStreamClosed forgets a SotW stream.
func (c callbacks) OnStreamClosed(id int64, _ *corev3.Node) { c.close(streamKey{apiSotW, id}) }

// OnDeltaStreamClosed forgets a delta stream.
func (c callbacks) OnDeltaStreamClosed(id int64, _ *corev3.Node) { c.close(streamKey{apiDelta, id}) }

// OnStreamRequest checks and records a SotW request.
func (c callbacks) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	return c.request(streamKey{apiSotW, id}, request{
		node:        req.GetNode(),
		typeURL:     req.GetTypeUrl(),
		version:     req.GetVersionInfo(),
		nonce:       req.GetResponseNonce(),
		errorDetail: req.GetErrorDetail(),
		names:       req.GetResourceNames(),
	})
}

// OnStreamDeltaRequest checks and records a delta request.
func (c callbacks) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	return c.request(streamKey{apiDelta, id}, request{
		node:        req.GetNode(),
		typeURL:     req.GetTypeUrl(),
		nonce:       req.GetResponseNonce(),
		errorDetail: req.GetErrorDetail(),
		subscribe:   req.GetResourceNamesSubscribe(),
		unsubscribe: req.GetResourceNamesUnsubscribe(),
	})
}

// OnStreamResponse records a SotW response about to be sent.
func (c callbacks) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	c.response(streamKey{apiSotW, id}, resp.GetVersionInfo(), resp.GetNonce(), len(resp.GetResources()))
}

// OnStreamDeltaResponse records a delta response about to be sent.
func (c callbacks) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	c.response(streamKey{apiDelta, id}, resp.GetSystemVersionInfo(), resp.GetNonce(), len(resp.GetResources()))
}

// OnFetchRequest checks a fetch and reports unknown names.
func (c callbacks) OnFetchRequest(_ context.Context, req *discoveryv3.DiscoveryRequest) error {
	s := c.s
	if err := checkRequest(req.GetNode(), true, req.GetTypeUrl()); err != nil {
		s.log.Warn("fetch rejected", zap.String("node_id", req.GetNode().GetId()), zap.Error(err))
		return err
	}
	for _, name := range dedupe(req.GetResourceNames()) {
		if err := s.cfg.Source.CheckName(name); err != nil {
			s.cfg.Metrics.SDSUnknownNames.Inc()
			s.log.Warn("unknown resource name requested", zap.String("api", apiFetch),
				zap.String("node_id", req.GetNode().GetId()), zap.String("resource", name), zap.NamedError("reason", err))
		}
	}
	return nil
}

// OnFetchResponse counts a fetch answer.
func (c callbacks) OnFetchResponse(req *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	c.s.pushes[apiFetch].Inc()
	c.s.log.Debug("fetch answered", zap.String("node_id", req.GetNode().GetId()),
		zap.Strings("names", req.GetResourceNames()), zap.String("version", resp.GetVersionInfo()))
}

func (c callbacks) open(key streamKey) {
	s := c.s
	s.mu.Lock()
	s.nextID++
	st := &streamState{id: s.nextID, api: key.api, openedAt: time.Now(), checked: map[string]bool{}}
	s.streams[key] = st
	s.streamGauge[key.api].Inc()
	s.notifyLocked()
	s.mu.Unlock()
	s.log.Debug("stream opened", zap.Int64("stream_id", st.id), zap.String("api", key.api))
}

func (c callbacks) close(key streamKey) {
	s := c.s
	s.mu.Lock()
	st, ok := s.streams[key]
	if ok {
		delete(s.streams, key)
		s.streamGauge[key.api].Dec()
		s.setNamesLocked(st, nil)
	}
	s.notifyLocked()
	s.mu.Unlock()
	if ok {
		s.log.Debug("stream closed", zap.Int64("stream_id", st.id), zap.String("api", key.api),
			zap.String("node_id", st.nodeID), zap.Duration("age", time.Since(st.openedAt)))
		s.updateDemand()
	}
}

// checkRequest returns the gRPC error that ends a stream (or fetch) whose
// request is not an SDS request this server can answer.
func checkRequest(node *corev3.Node, first bool, typeURL string) error {
	if first && node.GetId() == "" {
		return status.Error(codes.InvalidArgument, "missing node information: the first request must carry node.id")
	}
	// The delta server fills in an empty type URL after this callback.
	if typeURL != "" && typeURL != resource.SecretType {
		return status.Errorf(codes.InvalidArgument, "unsupported type url %q: this server only serves %s", typeURL, resource.SecretType)
	}
	return nil
}

func (c callbacks) request(key streamKey, r request) error {
	s := c.s
	// Read what this request is checked against. Only this stream's
	// goroutine writes st, so it does not change between the two locks.
	s.mu.Lock()
	st, ok := s.streams[key]
	if !ok {
		s.mu.Unlock()
		return nil
	}
	first := !st.gotRequest
	lastNonce, lastVersion, nodeID := st.lastNonce, st.lastVersion, st.nodeID
	requested := r.names
	if key.api == apiDelta {
		requested = r.subscribe
	}
	var toCheck []string
	for _, name := range dedupe(requested) {
		if _, done := st.checked[name]; !done {
			toCheck = append(toCheck, name)
		}
	}
	s.mu.Unlock()

	if first {
		nodeID = r.node.GetId()
	}
	base := []zap.Field{zap.Int64("stream_id", st.id), zap.String("api", key.api), zap.String("node_id", nodeID)}
	fields := func(extra ...zap.Field) []zap.Field { return append(slices.Clip(base), extra...) }
	if err := checkRequest(r.node, first, r.typeURL); err != nil {
		s.log.Warn("stream rejected", fields(zap.Error(err))...)
		return err
	}
	// go-control-plane ignores a SotW request whose nonce is not the one
	// of the last response (the client has not seen that response yet).
	// Ignore it here too, so that it counts neither as ACK nor as NACK.
	if key.api == apiSotW && lastNonce != "" && r.nonce != lastNonce {
		s.log.Debug("stale nonce ignored", fields(zap.String("nonce", r.nonce), zap.String("current_nonce", lastNonce))...)
		return nil
	}

	unknown := map[string]error{}
	for _, name := range toCheck {
		if err := s.cfg.Source.CheckName(name); err != nil {
			unknown[name] = err
		}
	}

	nack := r.errorDetail != nil
	s.mu.Lock()
	st.gotRequest = true
	st.nodeID = nodeID
	for _, name := range toCheck {
		_, bad := unknown[name]
		st.checked[name] = !bad
		if bad {
			st.unknown = append(st.unknown, name)
		}
	}
	cache.SortNames(st.unknown)
	next := dedupe(r.names)
	if key.api == apiDelta {
		next = deltaNames(st.names, r.subscribe, r.unsubscribe)
	}
	cache.SortNames(next)
	s.setNamesLocked(st, next)
	switch {
	case nack:
		st.nacks++
		st.lastNack = r.errorDetail.GetMessage()
	case r.nonce != "" && key.api == apiSotW:
		st.ackedVersion = r.version
	case r.nonce != "" && r.nonce == lastNonce:
		st.ackedVersion = lastVersion
	}
	names := slices.Clone(st.names)
	s.mu.Unlock()

	for _, name := range slices.Sorted(maps.Keys(unknown)) {
		s.cfg.Metrics.SDSUnknownNames.Inc()
		s.log.Warn("unknown resource name requested", fields(zap.String("resource", name), zap.NamedError("reason", unknown[name]))...)
	}
	switch {
	case nack:
		s.cfg.Metrics.SDSNacks.Inc()
		s.log.Warn("nack received", fields(
			zap.Strings("names", names),
			zap.String("version", r.version),
			zap.String("rejected_version", lastVersion),
			zap.String("nonce", r.nonce),
			zap.Int32("code", r.errorDetail.GetCode()),
			zap.String("error", r.errorDetail.GetMessage()))...)
	case r.nonce != "":
		s.log.Debug("ack received", fields(zap.Strings("names", names), zap.String("version", r.version), zap.String("nonce", r.nonce))...)
	default:
		s.log.Debug("request received", fields(zap.Strings("names", names))...)
	}
	s.updateDemand()
	c.notify()
	return nil
}

func (c callbacks) response(key streamKey, version, nonce string, resources int) {
	s := c.s
	s.mu.Lock()
	st, ok := s.streams[key]
	if ok {
		st.lastNonce, st.lastVersion = nonce, version
		s.notifyLocked()
	}
	s.mu.Unlock()
	if !ok {
		return
	}
	s.pushes[key.api].Inc()
	s.log.Debug("response sent", zap.Int64("stream_id", st.id), zap.String("api", key.api),
		zap.String("version", version), zap.String("nonce", nonce), zap.Int("resources", resources))
}

func (c callbacks) notify() {
	c.s.mu.Lock()
	c.s.notifyLocked()
	c.s.mu.Unlock()
}

// deltaNames applies a delta subscription change to names.
func deltaNames(names, subscribe, unsubscribe []string) []string {
	out := slices.Clone(names)
	for _, n := range subscribe {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return slices.DeleteFunc(out, func(n string) bool { return slices.Contains(unsubscribe, n) })
}
