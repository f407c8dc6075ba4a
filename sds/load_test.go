package sds

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"google.golang.org/grpc"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

func TestManyConcurrentStreams(t *testing.T) {
	const (
		streams = 1000
		conns   = 4
	)
	if testing.Short() {
		t.Skip("many streams")
	}
	h := newHarness(t)
	first := h.publishAll()
	// A thousand streams under -race on a loaded machine: bound the
	// whole test generously, it is not a timing assertion.
	ctx, cancel := context.WithTimeout(context.Background(), 8*waitFor)
	t.Cleanup(cancel)

	clients := make([]*grpc.ClientConn, conns)
	for i := range clients {
		conn, err := sdstest.Dial(ctx, h.socket)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		clients[i] = conn
	}

	// Each stream gets its initial response and ACKs it, reports ready,
	// then waits for the rotation push. Goroutines report errors on
	// channels; only the test goroutine fails the test.
	var rotatedChain []byte
	rotated := make(chan struct{})
	ready := make(chan error, streams)
	pushed := make(chan error, streams)
	streamCtx, cancelStreams := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancelStreams()
		wg.Wait()
	})
	for i := range streams {
		wg.Go(func() {
			st, err := sdstest.OpenStream(streamCtx, clients[i%conns])
			if err != nil {
				ready <- err
				return
			}
			defer st.Close()
			err = func() error {
				if err := st.Request(def); err != nil {
					return err
				}
				resp, err := st.Recv(streamCtx)
				if err != nil {
					return fmt.Errorf("stream %d initial: %w", i, err)
				}
				if s := resp.Secret(def); s == nil || !bytes.Equal(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), first.ChainPEM) {
					return fmt.Errorf("stream %d initial: wrong secret %v", i, resp.Names())
				}
				return st.ACK()
			}()
			ready <- err
			if err != nil {
				return
			}
			select {
			case <-rotated:
			case <-streamCtx.Done():
				pushed <- streamCtx.Err()
				return
			}
			resp, err := st.Recv(streamCtx)
			if err != nil {
				pushed <- fmt.Errorf("stream %d push: %w", i, err)
				return
			}
			if s := resp.Secret(def); s == nil || !bytes.Equal(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), rotatedChain) {
				pushed <- fmt.Errorf("stream %d push: wrong secret %v", i, resp.Names())
				return
			}
			pushed <- nil
		})
	}

	var errs []error
	for range streams {
		if err := <-ready; err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("%d streams failed before rotation: %v", len(errs), errs[0])
	}
	h.waitStreams("all streams acked", func(s []StreamInfo) bool {
		if len(s) != streams {
			return false
		}
		for _, info := range s {
			if info.AckedVersion == "" {
				return false
			}
		}
		return true
	})

	rotatedChain = h.publishLeaf(spiffeA).ChainPEM
	close(rotated)
	for range streams {
		if err := <-pushed; err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		t.Fatalf("%d streams missed the rotation: %v", len(errs), errs[0])
	}
}
