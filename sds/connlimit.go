package sds

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
)

// The connection limit (Limits.MaxConnections) is enforced as a
// connection is accepted, before gRPC starts the goroutines it runs for
// every connection (reader, writer, keepalive). Go never frees a
// goroutine's descriptor and sizes some runtime structures for the peak
// number of goroutines, so what a burst of connections leaves in memory
// after it ends is bounded by this limit and MaxStreams.

// admit counts a new connection if it fits under MaxConnections.
func (s *Server) admit() bool {
	if s.accepted.Add(1) > int64(s.cfg.Limits.MaxConnections) {
		s.accepted.Add(-1)
		return false
	}
	return true
}

// refuseConn refuses c, a connection over MaxConnections. It counts and
// logs the refusal within the log limits. Up to maxDraining refused
// connections at a time get an answer a gRPC client shows its caller: an
// HTTP/2 server preface, then, to the first request, a ResourceExhausted
// status that names the limit and its flag, and a GOAWAY; each is read
// for at most the handshake timeout and drainBytes before it is closed.
// Others are closed at once. serving ends the answering.
func (s *Server) refuseConn(serving context.Context, c net.Conn) {
	msg := fmt.Sprintf("%d SDS connections are open, the limit (%s); try again later or raise it",
		s.cfg.Limits.MaxConnections, flagMaxConnections)
	s.cfg.Metrics.LimitRejections.WithLabelValues(limitConnections).Inc()
	if s.warn.Allow(nil, "connection refused by a limit") {
		s.warn.Write("connection refused by a limit", zap.String("limit", limitConnections), zap.String("error", msg))
	}
	if s.draining.Add(1) > maxDraining {
		s.draining.Add(-1)
		_ = c.Close()
		return
	}
	s.drainers.Go(func() {
		defer s.draining.Add(-1)
		stop := context.AfterFunc(serving, func() { _ = c.Close() })
		defer stop()
		defer c.Close()
		// A deadline on a socket is kernel time: the real clock.
		_ = c.SetDeadline(time.Now().Add(s.cfg.Limits.HandshakeTimeout))
		answerRefused(c, msg)
	})
}

// Bounds on answering refused connections (refuseConn): a client cannot
// hold more than maxDraining goroutines, each for at most the handshake
// timeout and drainBytes (a gRPC client sends a few hundred bytes before
// its first request).
const (
	maxDraining = 16
	drainBytes  = 64 << 10
)

// answerRefused writes the server preface to c, reads until the client's
// first request (a HEADERS frame), answers it with a ResourceExhausted
// status carrying msg and a GOAWAY, then reads what the client sends
// until it closes. Errors end it: c is being refused anyway.
func answerRefused(c net.Conn, msg string) {
	r := bufio.NewReader(io.LimitReader(c, drainBytes))
	fr := http2.NewFramer(c, r)
	if err := fr.WriteSettings(); err != nil {
		return
	}
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(r, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	var stream uint32
	for stream == 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		if h, ok := f.(*http2.HeadersFrame); ok {
			stream = h.StreamID
		}
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range []hpack.HeaderField{
		{Name: ":status", Value: "200"},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "grpc-status", Value: strconv.Itoa(int(codes.ResourceExhausted))},
		{Name: "grpc-message", Value: percentEncode(msg)},
	} {
		_ = enc.WriteField(f) // writes to a bytes.Buffer cannot fail
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		return
	}
	if err := fr.WriteGoAway(stream, http2.ErrCodeEnhanceYourCalm, nil); err != nil {
		return
	}
	// The client closes the connection once it has read the answer.
	_, _ = io.Copy(io.Discard, r)
}

// percentEncode encodes s as gRPC's grpc-message header requires: bytes
// outside printable ASCII, and '%', as %XX.
func percentEncode(s string) string {
	var b strings.Builder
	for i := range len(s) {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}
