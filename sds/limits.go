package sds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/ratelog"
)

// Limits bound what SDS clients may ask for. Each refusal is a gRPC
// ResourceExhausted status whose message names the limit and its flag,
// a count in sdsagent_limit_rejections_total{limit}, and a rate-limited
// warning. The defaults fit a sidecar and a node agent serving a few
// hundred proxies: Envoy asks for one or two names per stream and opens
// one stream per secret.
type Limits struct {
	// MaxNamesPerRequest bounds the resource names of one request, and
	// the names one delta stream subscribes to. Default 100.
	MaxNamesPerRequest int
	// MaxNameBytes bounds the length of a resource name. Default 4 KiB.
	MaxNameBytes int
	// MaxStreamsPerConn bounds the SDS streams open on one connection.
	// Default 512.
	MaxStreamsPerConn int
	// MaxStreams bounds the SDS streams open in total. Default 4096.
	MaxStreams int
	// MaxMessageBytes bounds the size of a received message. Default 1 MiB.
	MaxMessageBytes int
	// HandshakeTimeout bounds the time a new connection has to send its
	// HTTP/2 preface; a connection that has not is closed. Default 5s.
	HandshakeTimeout time.Duration
	// MaxConnections bounds the client connections open at once; one
	// over it is closed as it is accepted. Default 1024.
	MaxConnections int
}

// Default limits, see Limits.
const (
	DefaultMaxNamesPerRequest = 100
	DefaultMaxNameBytes       = 4 << 10
	DefaultMaxStreamsPerConn  = 512
	DefaultMaxStreams         = 4096
	DefaultMaxMessageBytes    = 1 << 20
	DefaultHandshakeTimeout   = 5 * time.Second
	DefaultMaxConnections     = 1024
)

// The agent's flags that set the limits, named in refusals.
const (
	flagMaxNames          = "--sds-max-names-per-request"
	flagMaxNameBytes      = "--sds-max-name-bytes"
	flagMaxStreamsPerConn = "--sds-max-streams-per-connection"
	flagMaxStreams        = "--sds-max-streams"
	flagMaxMessageBytes   = "--sds-max-message-bytes"
	flagHandshakeTimeout  = "--sds-handshake-timeout"
	flagMaxConnections    = "--sds-max-connections"
)

// Values of the "limit" label of sdsagent_limit_rejections_total.
const (
	limitNames          = "names_per_request"
	limitNameBytes      = "name_bytes"
	limitStreamsPerConn = "streams_per_connection"
	limitStreams        = "streams"
	limitMessageBytes   = "message_bytes"
	limitHandshake      = "handshake_timeout"
	limitConnections    = "connections"
)

func (l Limits) withDefaults() (Limits, error) {
	ints := []struct {
		p    *int
		def  int
		flag string
	}{
		{&l.MaxNamesPerRequest, DefaultMaxNamesPerRequest, flagMaxNames},
		{&l.MaxNameBytes, DefaultMaxNameBytes, flagMaxNameBytes},
		{&l.MaxStreamsPerConn, DefaultMaxStreamsPerConn, flagMaxStreamsPerConn},
		{&l.MaxStreams, DefaultMaxStreams, flagMaxStreams},
		{&l.MaxMessageBytes, DefaultMaxMessageBytes, flagMaxMessageBytes},
		{&l.MaxConnections, DefaultMaxConnections, flagMaxConnections},
	}
	for _, f := range ints {
		switch {
		case *f.p == 0:
			*f.p = f.def
		case *f.p < 0:
			return l, fmt.Errorf("limit %s must be positive, got %d", f.flag, *f.p)
		}
	}
	switch {
	case l.HandshakeTimeout == 0:
		l.HandshakeTimeout = DefaultHandshakeTimeout
	case l.HandshakeTimeout < 0:
		return l, fmt.Errorf("limit %s must be positive, got %s", flagHandshakeTimeout, l.HandshakeTimeout)
	}
	return l, nil
}

// fetchHeadroom is how many streams beyond MaxStreamsPerConn HTTP/2 lets
// a connection open, so fetches still get through, and a client opening
// one stream too many gets the limit's error rather than a wait.
const fetchHeadroom = 16

// grpcOptions returns the gRPC server's options: the limits it enforces
// itself, and the connection tagging the stream limits need. Every
// connection's context is cancelled when serving (Serve's ctx) ends.
func (s *Server) grpcOptions(serving context.Context) []grpc.ServerOption {
	lim := s.cfg.Limits
	return append(transportOptions(s.cfg.untune),
		grpc.WaitForHandlers(true),
		grpc.ConnectionTimeout(lim.HandshakeTimeout),
		grpc.MaxRecvMsgSize(hardMessageBytes(lim.MaxMessageBytes)),
		newSizedCodec(),
		grpc.MaxConcurrentStreams(uint32(min(lim.MaxStreamsPerConn+fetchHeadroom, 1<<31))),
		grpc.StatsHandler(connTagger{open: &s.conns, serving: serving}),
	)
}

// serviceDesc is the generated SDS service description with a FetchSecrets
// handler of our own, which refuses a request over the size limit with
// the limit's error (recvSized).
func (s *Server) serviceDesc() *grpc.ServiceDesc {
	desc := secretv3.SecretDiscoveryService_ServiceDesc
	desc.Methods = slices.Clone(desc.Methods)
	for i := range desc.Methods {
		if desc.Methods[i].MethodName == "FetchSecrets" {
			desc.Methods[i].Handler = fetchHandler
		}
	}
	return &desc
}

func fetchHandler(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	svc := srv.(service)
	req, err := recvSized[discoveryv3.DiscoveryRequest](svc.s, dec)
	if err != nil {
		return nil, svc.s.recvError(err)
	}
	return svc.FetchSecrets(ctx, req)
}

// recvError counts and logs gRPC's refusal of a message over twice the
// size limit (hardMessageBytes), whose status gRPC has written already;
// other errors are returned as they are.
func (s *Server) recvError(err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "larger than max") {
		return err
	}
	return s.limitError(limitMessageBytes, nil, "request message over the size limit of %d bytes (%s): %s",
		s.cfg.Limits.MaxMessageBytes, flagMaxMessageBytes, st.Message())
}

// checkNames refuses lists of names over the count or length limits.
func (s *Server) checkNames(client *ratelog.Limiter, lists ...[]string) error {
	lim := s.cfg.Limits
	for _, names := range lists {
		if len(names) > lim.MaxNamesPerRequest {
			return s.limitError(limitNames, client, "request asks for %d resource names; the limit is %d per request (%s)",
				len(names), lim.MaxNamesPerRequest, flagMaxNames)
		}
		for _, n := range names {
			if len(n) > lim.MaxNameBytes {
				return s.limitError(limitNameBytes, client, "resource name %q is %d bytes long; the limit is %d bytes (%s)",
					ratelog.Cut(n), len(n), lim.MaxNameBytes, flagMaxNameBytes)
			}
		}
	}
	return nil
}

// limitError counts a refusal by a limit, logs it within the log limits,
// and returns the ResourceExhausted status the client gets.
func (s *Server) limitError(limit string, client *ratelog.Limiter, format string, args ...any) error {
	s.cfg.Metrics.LimitRejections.WithLabelValues(limit).Inc()
	msg := fmt.Sprintf(format, args...)
	if s.warn.Allow(client, "request refused by a limit") {
		s.warn.Write("request refused by a limit", zap.String("limit", limit), zap.String("error", msg))
	}
	return status.Error(codes.ResourceExhausted, msg)
}

// connState is what the server knows of one client connection.
type connState struct {
	// streams counts the connection's open SDS streams; Server.mu
	// guards it.
	streams int
	// release unlinks the connection's context from the serving one.
	release func()
}

type connKey struct{}

// connFrom returns the connection state of a stream's context.
func connFrom(ctx context.Context) *connState {
	c, _ := ctx.Value(connKey{}).(*connState)
	return c
}

// connTagger gives every connection its connState: stream contexts
// derive from the connection's. open counts the open connections. The
// connection's context is cancelled when serving ends, which ends its
// streams: a stream handler waits in Recv, and only its context wakes it.
type connTagger struct {
	open    *atomic.Int64
	serving context.Context
}

func (t connTagger) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(t.serving, cancel)
	return context.WithValue(ctx, connKey{}, &connState{release: func() { stop(); cancel() }})
}
func (t connTagger) HandleConn(ctx context.Context, st stats.ConnStats) {
	switch st.(type) {
	case *stats.ConnBegin:
		t.open.Add(1)
	case *stats.ConnEnd:
		t.open.Add(-1)
		if c := connFrom(ctx); c != nil && c.release != nil {
			c.release()
		}
	}
}
func (connTagger) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return ctx
}
func (connTagger) HandleRPC(context.Context, stats.RPCStats) {}

// limitHandshakes wraps lis so that a connection closed for not sending
// its HTTP/2 preface in time (gRPC's ConnectionTimeout, the only read
// deadline gRPC sets) is counted and logged, and one over MaxConnections
// is refused (refuseConn) until serving ends.
func (s *Server) limitHandshakes(serving context.Context, lis net.Listener) net.Listener {
	return handshakeListener{Listener: lis, s: s, serving: serving}
}

type handshakeListener struct {
	net.Listener
	s       *Server
	serving context.Context
}

func (l handshakeListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if !l.s.admit() {
			l.s.refuseConn(l.serving, c)
			continue
		}
		hc := &handshakeConn{Conn: c, s: l.s}
		if l.s.cfg.untune&untunePollRead != 0 {
			return hc, nil
		}
		return newPollConn(hc), nil
	}
}

type handshakeConn struct {
	net.Conn
	s        *Server
	timedOut atomic.Bool
	closed   atomic.Bool
}

// Close closes the connection, making room for another under
// MaxConnections.
func (c *handshakeConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.s.accepted.Add(-1)
	}
	return c.Conn.Close()
}

func (c *handshakeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.readFailed(err)
	}
	return n, err
}

// readFailed counts and logs a read that failed because gRPC's handshake
// deadline passed.
func (c *handshakeConn) readFailed(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) && c.timedOut.CompareAndSwap(false, true) {
		s := c.s
		s.cfg.Metrics.LimitRejections.WithLabelValues(limitHandshake).Inc()
		if s.warn.Allow(nil, "connection closed before its http/2 preface") {
			s.warn.Write("connection closed before its http/2 preface",
				zap.Duration("timeout", s.cfg.Limits.HandshakeTimeout), zap.String("flag", flagHandshakeTimeout))
		}
	}
}

// SyscallConn exposes the socket for checks such as SO_PEERCRED.
func (c *handshakeConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("connection has no file descriptor")
	}
	return sc.SyscallConn()
}

// NetConn returns the wrapped connection.
func (c *handshakeConn) NetConn() net.Conn { return c.Conn }

// Log limits: lines caused by requests, overall and per stream.
const (
	// logBurst lines per logWindow in total, for each of warn and debug:
	// with names and node IDs cut, a line is under 1 KB, so clients
	// cannot make the agent write more than about 2×25 KB/s.
	logBurst  = 25
	logWindow = time.Second
	// streamLogBurst lines per streamLogWindow for one stream.
	streamLogBurst  = 10
	streamLogWindow = time.Minute
	// summaryEvery is how often suppressed lines are summarized when no
	// line passes to carry the summary.
	summaryEvery = 10 * time.Second
	// maxReasonBytes and maxNackBytes cut errors that quote client input.
	maxReasonBytes = 512
	maxNackBytes   = 512
)

const msgUnknownName = "unknown resource name requested"

func newStreamLimiter(clk clock.Clock) *ratelog.Limiter {
	return ratelog.NewLimiter(clk, streamLogBurst, streamLogWindow)
}

func sortNames(names []string) { cache.SortNames(names) }

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
