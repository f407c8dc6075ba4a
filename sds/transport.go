package sds

import (
	"io"
	"net"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
)

// Per-connection transport settings. SDS messages are a few KB and an
// Envoy connection is idle between rotations, so an idle connection
// should hold no buffer at all; gRPC's defaults pin 32 KB for reading
// and 32 KB for writing on every connection, whether it is busy or not.
const (
	// writeBufferSize is the batch of frames written in one syscall. The
	// buffer comes from a pool shared by all connections and goes back to
	// it after every flush (grpc.SharedWriteBuffer, the default in
	// grpc-go 1.85, which deprecates the option), so its size costs
	// memory only while a write is in progress.
	writeBufferSize = 16 << 10
	// readBufferSize is the most one read syscall takes. Reads go through
	// pollConn.ReadOnReady: a buffer is taken from gRPC's pool only
	// once the socket is readable, and returned when the data is
	// consumed, so an idle connection holds none.
	readBufferSize = 16 << 10
	// windowSize is the HTTP/2 flow-control window of each stream and of
	// each connection: gRPC's minimum. A static window turns off gRPC's
	// bandwidth-delay estimation, which grows windows to 16 MB for bulk
	// transfers an SDS client never makes, and so bounds what a client
	// can make the agent buffer on a connection it does not read.
	// Messages above it (up to MaxMessageBytes) still pass: the window
	// opens as they are read.
	windowSize = 64 << 10
)

// untune names transport settings to leave at gRPC's defaults; the zero
// value tunes everything. Only tests and benchmarks set it, to show what
// each setting buys.
type untune uint8

const (
	untunePollRead    untune = 1 << iota // read through Read, pinning a buffer
	untuneBufferSizes                    // gRPC's 32 KB read and write buffers
	untuneWindows                        // dynamic windows (BDP estimation)
)

// transportOptions returns the gRPC server options that size the
// per-connection buffers and windows, leaving out those off names.
func transportOptions(off untune) []grpc.ServerOption {
	var opts []grpc.ServerOption
	if off&untuneBufferSizes == 0 {
		opts = append(opts, grpc.WriteBufferSize(writeBufferSize), grpc.ReadBufferSize(readBufferSize))
	}
	if off&untuneWindows == 0 {
		opts = append(opts, grpc.InitialWindowSize(windowSize), grpc.InitialConnWindowSize(windowSize))
	}
	return opts
}

// pollConn is a handshakeConn over a socket that gRPC can read without
// pinning a buffer: it implements the optional interface gRPC's
// transport looks for on a net.Conn (ReadOnReady), which gRPC only finds
// by itself on an unwrapped *net.UnixConn or *net.TCPConn. Without it,
// wrapping the connection (to count handshake timeouts) would cost every
// connection a 32 KB read buffer for its whole life.
type pollConn struct {
	*handshakeConn
	raw syscall.RawConn

	// State of the read in progress, kept here so that the callback
	// allocates nothing. gRPC reads a connection from one goroutine.
	read struct {
		size int
		pool mem.BufferPool
		buf  *[]byte
		n    int
		err  error
	}
	doRead func(fd uintptr) bool
}

// newPollConn returns c as a pollConn if its socket supports it, else c.
func newPollConn(c *handshakeConn) net.Conn {
	switch c.Conn.(type) {
	case *net.UnixConn, *net.TCPConn:
	default:
		return c
	}
	raw, err := c.Conn.(syscall.Conn).SyscallConn()
	if err != nil {
		return c
	}
	p := &pollConn{handshakeConn: c, raw: raw}
	p.doRead = func(fd uintptr) bool {
		r := &p.read
		r.buf = r.pool.Get(r.size)
		// syscall, not x/sys/unix: the net package uses syscall, and the
		// race detector must see one kind of read.
		r.n, r.err = syscall.Read(int(fd), *r.buf)
		if r.err != nil {
			r.pool.Put(r.buf)
			r.buf = nil
			return r.err != syscall.EAGAIN && r.err != syscall.EWOULDBLOCK
		}
		return true
	}
	return p
}

// ReadOnReady waits until the socket is readable, then takes a buffer of
// size bytes from pool and reads into it. It returns the buffer (for the
// caller to put back), the bytes read and an error; io.EOF at the end.
// This is the method gRPC's transport uses instead of Read when present.
func (p *pollConn) ReadOnReady(size int, pool mem.BufferPool) (*[]byte, int, error) {
	p.read.size, p.read.pool = size, pool
	err := p.raw.Read(p.doRead)
	buf, n, rerr := p.read.buf, p.read.n, p.read.err
	p.read.pool, p.read.buf, p.read.err = nil, nil, nil
	if err != nil {
		if buf != nil {
			pool.Put(buf)
		}
		p.readFailed(err)
		return nil, 0, err
	}
	if rerr != nil {
		return nil, 0, rerr
	}
	if n == 0 {
		pool.Put(buf)
		return nil, 0, io.EOF
	}
	return buf, n, nil
}
