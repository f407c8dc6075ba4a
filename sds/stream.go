package sds

import (
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/internal/ratelog"
)

// stream is the state of one SotW or delta stream. Whoever holds mu
// uses it: the handler answering a request, or a push; what operators
// see (info) is copied under s.mu.
type stream struct {
	// mu serializes the stream's state and its sends (serveStream, push).
	mu sync.Mutex
	// respond sends what is due; set before the first request.
	respond func() error
	// ended: the handler returned, nothing more is sent. pushErr is the
	// error of a failed push. Both under mu.
	ended   bool
	pushErr error
	// pending: a request was received and waits for mu, so a push
	// leaves the sending to its answer. pushQueued: a push goroutine
	// has started and not yet taken mu.
	pending, pushQueued atomic.Bool

	s    *Server
	info *streamState
	api  string
	conn *connState
	// warnLim and debugLim bound this stream's log lines.
	warnLim, debugLim *ratelog.Limiter

	gotRequest bool
	nodeID     string // cut for logs
	// names is the subscription, sorted; checked caches CheckName for
	// the names asked (true: servable, now or later).
	names   []string
	checked map[string]bool
	// have is the version (table update) of each secret this stream has
	// been sent and not lost; lastSeq is the highest version sent.
	have    map[string]uint64
	lastSeq uint64
	// nonces counts responses; lastNonce and lastVersion are the last one's.
	nonces                 uint64
	lastNonce, lastVersion string
	// removed are names to answer in a delta removed_resources: names
	// subscribed to that can never exist.
	removed []string
}

// request is what the bookkeeping needs from a SotW or delta request.
type request struct {
	node    *corev3.Node
	typeURL string
	version string // SotW version_info
	nonce   string
	errMsg  string
	errCode int32
	nack    bool
}

func (st *stream) handleSotW(req *discoveryv3.DiscoveryRequest) error {
	r := request{node: req.GetNode(), typeURL: req.GetTypeUrl(), version: req.GetVersionInfo(), nonce: req.GetResponseNonce()}
	if d := req.GetErrorDetail(); d != nil {
		r.nack, r.errMsg, r.errCode = true, d.GetMessage(), d.GetCode()
	}
	if err := st.check(r, req.GetResourceNames(), nil); err != nil {
		return err
	}
	// A request that answers an older response than the last one sent
	// was written before the client saw the last one: ignore it whole,
	// so it counts neither as ACK nor as NACK.
	if st.lastNonce != "" && r.nonce != st.lastNonce {
		if st.s.debug.Allow(st.debugLim, "stale nonce ignored") {
			st.s.debug.Write("stale nonce ignored", st.fields(zap.String("nonce", ratelog.Cut(r.nonce)), zap.String("current_nonce", st.lastNonce))...)
		}
		return nil
	}
	names := dedupe(req.GetResourceNames())
	for _, n := range st.names {
		if !slices.Contains(names, n) {
			delete(st.have, n) // asked again later: the client forgot it
		}
	}
	st.record(r, names)
	return nil
}

func (st *stream) handleDelta(req *discoveryv3.DeltaDiscoveryRequest) error {
	r := request{node: req.GetNode(), typeURL: req.GetTypeUrl(), nonce: req.GetResponseNonce()}
	if d := req.GetErrorDetail(); d != nil {
		r.nack, r.errMsg, r.errCode = true, d.GetMessage(), d.GetCode()
	}
	sub, unsub := req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe()
	if err := st.check(r, sub, unsub); err != nil {
		return err
	}
	first := !st.gotRequest
	names := slices.Clone(st.names)
	for _, n := range unsub {
		names = slices.DeleteFunc(names, func(x string) bool { return x == n })
		delete(st.have, n)
	}
	for _, n := range dedupe(sub) {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
		// A client subscribes again to a name it holds when it has
		// forgotten it: send it again.
		delete(st.have, n)
	}
	if len(names) > st.s.cfg.Limits.MaxNamesPerRequest {
		return st.s.limitError(limitNames, st.warnLim, "stream would ask for %d resource names; the limit is %d (%s)",
			len(names), st.s.cfg.Limits.MaxNamesPerRequest, flagMaxNames)
	}
	if first {
		// A reconnecting client says what it holds; what it holds at
		// our current version is not sent again.
		for n, v := range req.GetInitialResourceVersions() {
			if e, ok := st.s.table.get(n); ok && e.version == v && slices.Contains(names, n) {
				st.have[n] = e.seq
			}
		}
	}
	st.record(r, names)
	// Names that can never exist are answered as removed, each time they
	// are subscribed to, so the client stops waiting for them.
	for _, n := range dedupe(sub) {
		if !st.checked[n] && !slices.Contains(st.removed, n) {
			st.removed = append(st.removed, n)
		}
	}
	return nil
}

// check applies the checks every request must pass; an error ends the
// stream.
func (st *stream) check(r request, lists ...[]string) error {
	s := st.s
	rule := nodeOptional
	if !st.gotRequest {
		st.nodeID = ratelog.Cut(r.node.GetId())
		rule = nodeRequired
	}
	if err := checkRequest(r.node, rule, r.typeURL); err != nil {
		if s.warn.Allow(st.warnLim, "stream rejected") {
			s.warn.Write("stream rejected", st.fields(zap.Error(err))...)
		}
		return err
	}
	return s.checkNames(st.warnLim, lists...)
}

// record updates the subscription to names and does the ACK/NACK
// bookkeeping of r.
func (st *stream) record(r request, names []string) {
	s := st.s
	st.gotRequest = true
	var fresh []string
	for _, n := range names {
		if _, ok := st.checked[n]; !ok {
			fresh = append(fresh, n)
		}
	}
	unknown := map[string]error{}
	for _, n := range fresh {
		err := s.cfg.Source.CheckName(n)
		st.checked[n] = err == nil
		if err != nil {
			unknown[n] = err
		}
	}
	sortNames(names)
	st.names = names
	// A client asking for new names on every request must not grow the
	// cache without bound: keep only the names asked now.
	if len(st.checked) > 4*s.cfg.Limits.MaxNamesPerRequest {
		for n := range st.checked {
			if !slices.Contains(names, n) {
				delete(st.checked, n)
			}
		}
	}

	for _, n := range sortedKeys(unknown) {
		s.cfg.Metrics.SDSUnknownNames.Inc()
		if s.warn.Allow(st.warnLim, msgUnknownName) {
			s.warn.Write(msgUnknownName, st.fields(zap.String("resource", ratelog.Cut(n)),
				zap.String("reason", ratelog.CutN(unknown[n].Error(), maxReasonBytes)))...)
		}
	}
	switch {
	case r.nack:
		s.cfg.Metrics.SDSNacks.Inc()
		if s.warn.Allow(st.warnLim, "nack received") {
			s.warn.Write("nack received", st.fields(
				zap.Strings("names", ratelog.CutAll(names)),
				zap.String("version", ratelog.Cut(r.version)),
				zap.String("rejected_version", st.lastVersion),
				zap.String("nonce", ratelog.Cut(r.nonce)),
				zap.Int32("code", r.errCode),
				zap.String("error", ratelog.CutN(r.errMsg, maxNackBytes)))...)
		}
	case r.nonce != "":
		if s.debug.Allow(st.debugLim, "ack received") {
			s.debug.Write("ack received", st.fields(zap.Strings("names", ratelog.CutAll(names)),
				zap.String("version", ratelog.Cut(r.version)), zap.String("nonce", ratelog.Cut(r.nonce)))...)
		}
	default:
		if s.debug.Allow(st.debugLim, "request received") {
			s.debug.Write("request received", st.fields(zap.Strings("names", ratelog.CutAll(names)))...)
		}
	}
	// What operators see changes after the logs, so that whoever waits
	// for it (waitStreams) finds them written.
	s.mu.Lock()
	info := st.info
	info.gotRequest = true
	info.nodeID = st.nodeID
	for n := range unknown {
		// Kept cut, and at most as many as one request may name.
		if n = ratelog.Cut(n); len(info.unknown) < s.cfg.Limits.MaxNamesPerRequest && !slices.Contains(info.unknown, n) {
			info.unknown = append(info.unknown, n)
		}
	}
	sortNames(info.unknown)
	s.setNamesLocked(info, slices.Clone(names))
	switch {
	case r.nack:
		info.nacks++
		info.lastNack = ratelog.CutN(r.errMsg, maxNackBytes)
	case r.nonce != "" && st.api == apiSotW:
		info.ackedVersion = ratelog.Cut(r.version)
	case r.nonce != "" && r.nonce == st.lastNonce:
		info.ackedVersion = st.lastVersion
	}
	s.mu.Unlock()

	s.updateDemand()
	// Waiters (waitStreams) wake after the logs and the demand.
	s.mu.Lock()
	s.notifyLocked()
	s.mu.Unlock()
}

// due returns the secrets the stream asks for that it does not have at
// their current version. An expired workload certificate is never sent:
// a stream that has it keeps it (SDS cannot take it back), one that does
// not waits, as before the first certificate. For delta, gone are the
// secrets it has that no longer exist.
func (st *stream) due() (due []*entry, gone []string) {
	now := st.s.cfg.Clock.Now()
	for _, n := range st.names {
		if !st.checked[n] {
			continue
		}
		e, ok := st.s.table.get(n)
		if !ok {
			if _, had := st.have[n]; had {
				gone = append(gone, n)
			}
			continue
		}
		if st.have[n] == e.seq || e.expired(now) {
			continue
		}
		due = append(due, e)
	}
	return due, gone
}

// dueSotW returns the response to send now, or nil.
func (st *stream) dueSotW() *discoveryv3.DiscoveryResponse {
	due, gone := st.due()
	for _, n := range gone {
		delete(st.have, n) // SotW cannot say it; if it comes back, send it
	}
	if len(due) == 0 {
		return nil
	}
	resp := &discoveryv3.DiscoveryResponse{TypeUrl: secretType}
	for _, e := range due {
		resp.Resources = append(resp.Resources, e.res)
		st.take(e)
	}
	resp.VersionInfo, resp.Nonce = st.s.table.version(st.lastSeq), st.nextNonce()
	return resp
}

// dueDelta returns the response to send now, or nil.
func (st *stream) dueDelta() *discoveryv3.DeltaDiscoveryResponse {
	due, gone := st.due()
	removed := append(st.removed, gone...)
	st.removed = nil
	if len(due) == 0 && len(removed) == 0 {
		return nil
	}
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: secretType, RemovedResources: removed}
	for _, e := range due {
		resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: e.name, Version: e.version, Resource: e.res})
		st.take(e)
	}
	for _, n := range gone {
		delete(st.have, n)
	}
	resp.SystemVersionInfo, resp.Nonce = st.s.table.version(st.lastSeq), st.nextNonce()
	return resp
}

// take records that e is being sent.
func (st *stream) take(e *entry) {
	st.have[e.name] = e.seq
	st.lastSeq = max(st.lastSeq, e.seq)
}

func (st *stream) nextNonce() string {
	st.nonces++
	return strconv.FormatUint(st.nonces, 10)
}

// sent records a response written to the client. Waiters (waitStreams)
// wake after the metric and the log line, so they find both.
func (st *stream) sent(version, nonce string, resources int) {
	s := st.s
	st.lastNonce, st.lastVersion = nonce, version
	s.pushes[st.api].Inc()
	if s.debug.Allow(st.debugLim, "response sent") {
		s.debug.Write("response sent", st.fields(zap.String("version", version), zap.String("nonce", nonce), zap.Int("resources", resources))...)
	}
	s.mu.Lock()
	s.notifyLocked()
	s.mu.Unlock()
}

// fields are the log fields naming the stream, then extra.
func (st *stream) fields(extra ...zap.Field) []zap.Field {
	return append([]zap.Field{zap.Int64("stream_id", st.info.id), zap.String("api", st.api), zap.String("node_id", st.nodeID)}, extra...)
}

// nodeRule says whether a request must carry node.id: the first of a
// stream and every fetch must, later requests of a stream need not.
type nodeRule bool

const (
	nodeOptional nodeRule = false
	nodeRequired nodeRule = true
)

// checkRequest returns the gRPC error that ends a stream (or fetch) whose
// request is not an SDS request this server can answer. An empty type URL
// is taken as the Secret type, as go-control-plane did.
func checkRequest(node *corev3.Node, rule nodeRule, typeURL string) error {
	if rule == nodeRequired && node.GetId() == "" {
		return status.Error(codes.InvalidArgument, "missing node information: the first request must carry node.id")
	}
	if typeURL != "" && typeURL != secretType {
		return status.Errorf(codes.InvalidArgument, "unsupported type url %q: this server only serves %s", ratelog.Cut(typeURL), secretType)
	}
	return nil
}
