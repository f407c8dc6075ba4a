package sdstest

import "context"

// receiver hands the messages of one gRPC client stream to next, one at a
// time, from a goroutine that ends with the stream. Stream and
// DeltaStream share it.
type receiver[M any] struct {
	cancel context.CancelFunc
	ch     chan *M
	done   chan struct{}
	err    error // set before done is closed
}

// startReceiver starts receiving with recv until it fails or ctx ends;
// cancel must end ctx (and so the stream).
func startReceiver[M any](ctx context.Context, cancel context.CancelFunc, recv func() (*M, error)) *receiver[M] {
	r := &receiver[M]{cancel: cancel, ch: make(chan *M), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			msg, err := recv()
			if err != nil {
				r.err = err
				return
			}
			select {
			case r.ch <- msg:
			case <-ctx.Done():
				r.err = ctx.Err()
				return
			}
		}
	}()
	return r
}

// next returns the next message, or the stream's error once it has ended
// (io.EOF after a clean end), or ctx's error.
func (r *receiver[M]) next(ctx context.Context) (*M, error) {
	select {
	case msg := <-r.ch:
		return msg, nil
	case <-r.done:
		return nil, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// close ends the stream and waits for the receiving goroutine.
func (r *receiver[M]) close() {
	r.cancel()
	<-r.done
}
