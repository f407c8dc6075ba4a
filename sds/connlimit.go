package sds

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"go.uber.org/zap"
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

// HTTP/2 frame types, flags and codes of the answer to a refused
// connection (RFC 9113, sections 3.4, 6 and 7).
const (
	http2Preface           = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	frameTypeHeaders       = 0x1
	frameTypeSettings      = 0x4
	frameTypeGoAway        = 0x7
	flagsEndStreamHeaders  = 0x1 | 0x4
	errCodeEnhanceYourCalm = 0xb
	frameHeaderLen         = 9
	// grpcResourceExhausted is codes.ResourceExhausted on the wire.
	grpcResourceExhausted = "8"
)

// answerRefused writes the server preface to c, reads until the client's
// first request (a HEADERS frame), answers it with a ResourceExhausted
// status carrying msg and a GOAWAY, then reads what the client sends
// until it closes. Errors end it: c is being refused anyway.
func answerRefused(c net.Conn, msg string) {
	if _, err := c.Write(appendFrameHeader(nil, 0, frameTypeSettings, 0, 0)); err != nil {
		return
	}
	r := bufio.NewReader(io.LimitReader(c, drainBytes))
	preface := make([]byte, len(http2Preface))
	if _, err := io.ReadFull(r, preface); err != nil || string(preface) != http2Preface {
		return
	}
	var hdr [frameHeaderLen]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		length := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		if _, err := r.Discard(length); err != nil {
			return
		}
		if hdr[3] == frameTypeHeaders {
			break
		}
	}
	stream := binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff
	var block []byte
	block = appendLiteralHeader(block, ":status", "200")
	block = appendLiteralHeader(block, "content-type", "application/grpc")
	block = appendLiteralHeader(block, "grpc-status", grpcResourceExhausted)
	block = appendLiteralHeader(block, "grpc-message", percentEncode(msg))
	out := appendFrameHeader(nil, len(block), frameTypeHeaders, flagsEndStreamHeaders, stream)
	out = append(out, block...)
	out = appendFrameHeader(out, 8, frameTypeGoAway, 0, 0)
	out = binary.BigEndian.AppendUint32(out, stream) // last stream processed
	out = binary.BigEndian.AppendUint32(out, errCodeEnhanceYourCalm)
	if _, err := c.Write(out); err != nil {
		return
	}
	// The client closes the connection once it has read the answer.
	_, _ = io.Copy(io.Discard, r)
}

// appendFrameHeader appends the header of an HTTP/2 frame.
func appendFrameHeader(b []byte, length int, typ, flags byte, stream uint32) []byte {
	b = append(b, byte(length>>16), byte(length>>8), byte(length), typ, flags)
	return binary.BigEndian.AppendUint32(b, stream)
}

// appendLiteralHeader appends an HPACK "literal header field without
// indexing, new name" (RFC 7541, section 6.2.2), which needs no table.
func appendLiteralHeader(b []byte, name, value string) []byte {
	b = append(b, 0)
	b = appendHPACKString(b, name)
	return appendHPACKString(b, value)
}

// appendHPACKString appends s as an HPACK string literal without
// Huffman coding: its length as a 7-bit prefix integer, then s.
func appendHPACKString(b []byte, s string) []byte {
	n := len(s)
	if n < 127 {
		b = append(b, byte(n))
	} else {
		b = append(b, 127)
		for n -= 127; n >= 128; n >>= 7 {
			b = append(b, byte(n%128)|0x80)
		}
		b = append(b, byte(n))
	}
	return append(b, s...)
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
