package sds

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
)

// HTTP/2 frame types and flags the stuck client below uses (RFC 9113).
const (
	frameSettings = 0x4
	framePing     = 0x6
	flagAck       = 0x1
)

// http2Frame returns one HTTP/2 frame on stream 0.
func http2Frame(typ, flags byte, payload []byte) []byte {
	b := make([]byte, 9, 9+len(payload))
	b[0], b[1], b[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	b[3], b[4] = typ, flags
	return append(b, payload...)
}

// openStuckConn connects to socket as an HTTP/2 client that completes the
// connection preface and then never answers the server again: it ignores
// GOAWAY and never acknowledges the server's drain ping, so a graceful
// stop cannot close its connection. It returns once the server has
// acknowledged a ping, which it does only for a connection it has added
// to those a graceful stop waits for.
func openStuckConn(t *testing.T, socket string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	out := []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	out = append(out, http2Frame(frameSettings, 0, nil)...)
	out = append(out, http2Frame(framePing, 0, []byte("stuckcon"))...)
	if _, err := c.Write(out); err != nil {
		t.Fatalf("write preface: %v", err)
	}
	if err := c.SetReadDeadline(time.Now().Add(waitFor)); err != nil {
		t.Fatal(err)
	}
	for {
		typ, flags, payload, err := readFrame(c)
		if err != nil {
			t.Fatalf("waiting for the ping ack: %v", err)
		}
		if typ == framePing && flags&flagAck != 0 && string(payload) == "stuckcon" {
			return c
		}
	}
}

func readFrame(r io.Reader) (typ, flags byte, payload []byte, err error) {
	var hdr [9]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, 0, nil, fmt.Errorf("read frame header: %w", err)
	}
	n := binary.BigEndian.Uint32(append([]byte{0}, hdr[:3]...))
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, 0, nil, fmt.Errorf("read frame payload: %w", err)
	}
	return hdr[3], hdr[4], payload, nil
}

// A client that keeps its connection open cannot hold Serve: after
// gracefulStopTimeout (on the server's clock) the connections are closed
// and Serve returns.
func TestServeForcesStopAfterGracefulTimeout(t *testing.T) {
	dir, err := os.MkdirTemp("", "sds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	socket := filepath.Join(dir, "s.sock")
	clk := clocktest.New(time.Now())
	core, logs := observer.New(zapcore.InfoLevel)
	srv, err := New(Config{
		SocketPath: socket,
		Source:     testSource{cache.NewStore(clock.Real())},
		Logger:     zap.New(core),
		Clock:      clk,
	})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := Listen(socket, DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()

	conn := openStuckConn(t, socket)
	timers := clk.Timers()
	cancel()
	// The stop timer is the one timer Serve arms on the clock once its
	// context ends; until it fires, the stuck connection holds the
	// graceful stop.
	if !clk.WaitForTimers(timers+1, waitFor) {
		t.Fatal("serve armed no stop timer after its context ended")
	}
	clk.Advance(gracefulStopTimeout)
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve = %v, want nil", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Serve did not return after the graceful stop timeout")
	}
	if n := logs.FilterMessage("graceful stop timed out, closing connections").Len(); n != 1 {
		t.Errorf("logged %d forced stops, want 1", n)
	}
	// The server closed the stuck connection: reading ends.
	for {
		_, _, _, err := readFrame(conn)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the stuck connection is still open after Serve returned")
		}
		if err != nil {
			break
		}
	}
}
