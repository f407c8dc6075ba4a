package sds

import (
	"context"
	"errors"
	"io"
	"slices"
)

// serveStream runs a stream on the gRPC handler's goroutine, the only
// goroutine a stream has while it waits: it blocks in recv, and handles
// each request and sends the answer inline, holding st.mu. What a table
// update makes due while it waits is sent by a short-lived goroutine of
// the stream's own (see push), under the same mutex.
//
// A goroutine per stream that only receives would cost every stream a
// goroutine for its whole life; Go never frees a goroutine's descriptor,
// so the agent's memory after a churn would grow with it.
func serveStream[Req any](ctx context.Context, done <-chan struct{}, st *stream, recv func() (*Req, error), handle func(*Req) error, respond func() error) error {
	st.respond = respond
	defer st.end()
	for {
		req, err := recv()
		if err != nil {
			// Counted here, whatever ends the stream afterwards.
			err = st.s.recvError(err)
			if errors.Is(err, io.EOF) || ctx.Err() != nil || isDone(done) {
				return nil
			}
			return err
		}
		// A request received goes before a push waiting for the mutex:
		// the push would make its nonce stale. The answer to the
		// request carries what the push would have sent.
		st.pending.Store(true)
		st.mu.Lock()
		err = st.pushErr
		if err == nil {
			err = handle(req)
		}
		if err == nil {
			if err = respond(); err != nil {
				err = st.s.recvError(err)
			}
		}
		st.pending.Store(false)
		st.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

func isDone(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// end marks the stream ended: no push sends on it after this returns.
func (st *stream) end() {
	st.mu.Lock()
	st.ended = true
	st.mu.Unlock()
}

// push sends on st, from a goroutine of its own, what a table update
// made due, unless a push is already waiting to run (it will send it) or
// the handler is about to answer a request (its answer will).
func (st *stream) push() {
	if !st.pushQueued.CompareAndSwap(false, true) {
		return
	}
	st.s.pushers.Go(func() {
		st.mu.Lock()
		defer st.mu.Unlock()
		// An update from now on starts another push.
		st.pushQueued.Store(false)
		if st.ended || st.pushErr != nil || st.pending.Load() || st.respond == nil {
			return
		}
		// A failed send leaves the stream broken: its receive fails too,
		// and the handler returns the error at its next request.
		st.pushErr = st.respond()
	})
}

// pushChanged starts a push on every open stream that asks for one of
// names, the secrets a table update set or deleted. The table holds the
// update already, so a stream that has not asked yet gets it in the
// answer to its request.
func (s *Server) pushChanged(names []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, info := range s.streams {
		if info.owner != nil && slices.ContainsFunc(info.names, func(n string) bool { return slices.Contains(names, n) }) {
			info.owner.push()
		}
	}
}
