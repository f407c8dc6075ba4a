package sds

import (
	"context"
	"slices"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"go.uber.org/zap"
)

// service is the SDS gRPC service of one Serve. done is closed when that
// Serve's context ends, which ends every stream.
type service struct {
	s    *Server
	done <-chan struct{}
}

var _ secretv3.SecretDiscoveryServiceServer = service{}

// StreamSecrets serves a state-of-the-world stream.
func (svc service) StreamSecrets(gs secretv3.SecretDiscoveryService_StreamSecretsServer) error {
	st, err := svc.s.openStream(gs.Context(), apiSotW)
	if err != nil {
		return err
	}
	defer st.close()
	recv := func() (*discoveryv3.DiscoveryRequest, error) {
		return recvSized[discoveryv3.DiscoveryRequest](svc.s, gs.RecvMsg)
	}
	return serveStream(gs.Context(), svc.done, st, recv, st.handleSotW, func() error {
		resp := st.dueSotW()
		if resp == nil {
			return nil
		}
		if err := gs.Send(resp); err != nil {
			return err
		}
		st.sent(resp.GetVersionInfo(), resp.GetNonce(), len(resp.GetResources()))
		return nil
	})
}

// DeltaSecrets serves an incremental stream.
func (svc service) DeltaSecrets(gs secretv3.SecretDiscoveryService_DeltaSecretsServer) error {
	st, err := svc.s.openStream(gs.Context(), apiDelta)
	if err != nil {
		return err
	}
	defer st.close()
	recv := func() (*discoveryv3.DeltaDiscoveryRequest, error) {
		return recvSized[discoveryv3.DeltaDiscoveryRequest](svc.s, gs.RecvMsg)
	}
	return serveStream(gs.Context(), svc.done, st, recv, st.handleDelta, func() error {
		resp := st.dueDelta()
		if resp == nil {
			return nil
		}
		if err := gs.Send(resp); err != nil {
			return err
		}
		st.sent(resp.GetSystemVersionInfo(), resp.GetNonce(), len(resp.GetResources()))
		return nil
	})
}

// FetchSecrets answers one fetch.
func (svc service) FetchSecrets(_ context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	return svc.s.fetch(req)
}

// openStream registers a new stream, or refuses it when a stream limit is
// reached.
func (s *Server) openStream(ctx context.Context, api string) (*stream, error) {
	conn := connFrom(ctx)
	lim := s.cfg.Limits
	s.mu.Lock()
	switch {
	case len(s.streams) >= lim.MaxStreams:
		s.mu.Unlock()
		return nil, s.limitError(limitStreams, nil, "%d SDS streams are open, the limit (%s); try again later or raise it", lim.MaxStreams, flagMaxStreams)
	case conn != nil && conn.streams >= lim.MaxStreamsPerConn:
		s.mu.Unlock()
		return nil, s.limitError(limitStreamsPerConn, nil, "this connection has %d SDS streams open, the limit (%s)", lim.MaxStreamsPerConn, flagMaxStreamsPerConn)
	}
	if conn != nil {
		conn.streams++
	}
	s.nextID++
	info := &streamState{id: s.nextID, api: api, openedAt: s.cfg.Clock.Now()}
	st := &stream{
		s: s, info: info, api: api, conn: conn,
		warnLim:  newStreamLimiter(s.cfg.Clock),
		debugLim: newStreamLimiter(s.cfg.Clock),
		checked:  map[string]bool{},
		have:     map[string]uint64{},
	}
	info.owner = st
	s.streams[info.id] = info
	s.streamGauge[api].Inc()
	s.notifyLocked()
	s.mu.Unlock()
	if s.debug.Allow(st.debugLim, "stream opened") {
		s.debug.Write("stream opened", zap.Int64("stream_id", info.id), zap.String("api", api))
	}
	return st, nil
}

// close forgets the stream.
func (st *stream) close() {
	s := st.s
	s.mu.Lock()
	delete(s.streams, st.info.id)
	if st.conn != nil {
		st.conn.streams--
	}
	s.streamGauge[st.api].Dec()
	s.setNamesLocked(st.info, nil)
	s.notifyLocked()
	s.mu.Unlock()
	if s.debug.Allow(st.debugLim, "stream closed") {
		s.debug.Write("stream closed", st.fields(zap.Duration("age", s.cfg.Clock.Now().Sub(st.info.openedAt)))...)
	}
	s.updateDemand()
}

// streamState is what operators see of a stream (StreamInfo). s.mu
// guards it.
type streamState struct {
	id       int64
	api      string
	openedAt time.Time
	// owner is the stream, for pushes (pushChanged).
	owner *stream

	nodeID       string
	gotRequest   bool
	names        []string
	unknown      []string
	ackedVersion string
	nacks        int
	lastNack     string
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
