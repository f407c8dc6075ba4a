package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

const (
	// dialPoll is how often the socket is tried while the agent starts:
	// it creates its socket early, so a slow poll would measure the poll.
	dialPoll = time.Millisecond
	// stepLimit bounds one step that should take milliseconds (a dial,
	// a first response), so that a hang fails with a message.
	stepLimit = 10 * time.Second
)

// bencher runs the figures against agents it starts.
type bencher struct {
	p   params
	tmp string
	ca  *devCA
	out io.Writer
	seq int // numbers agents, for socket paths and messages
	// floorBin is the floor server built by floorBinary, if it was.
	floorBin string
}

// agentProc is a running `sdsagent run`.
type agentProc struct {
	*proc
	socket   string
	httpAddr string
	started  time.Time // just before cmd.Start
}

// startAgent starts `sdsagent run` with a fresh socket path and HTTP port.
func (b *bencher) startAgent(ctx context.Context, keyType string, ttl time.Duration, extra ...string) (*agentProc, error) {
	return b.startAgentEnv(ctx, nil, keyType, ttl, extra...)
}

// startAgentEnv is startAgent with env (KEY=value) added to the agent's
// environment.
func (b *bencher) startAgentEnv(ctx context.Context, env []string, keyType string, ttl time.Duration, extra ...string) (*agentProc, error) {
	b.seq++
	socket := filepath.Join(b.tmp, fmt.Sprintf("a%d.sock", b.seq))
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	p, started, err := startProcEnv(ctx, fmt.Sprintf("sdsagent run #%d", b.seq), b.p.agent, env, nil,
		append(b.ca.agentArgs(socket, httpAddr, keyType, ttl), extra...)...)
	if err != nil {
		return nil, err
	}
	return &agentProc{proc: p, socket: socket, httpAddr: httpAddr, started: started}, nil
}

// dial connects to the agent's socket, trying every dialPoll until it
// accepts or ctx ends; gRPC's own reconnect backoff (50 ms and up) would
// otherwise dominate a startup measurement.
func dial(ctx context.Context, socket string) (*grpc.ClientConn, error) {
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		for {
			c, err := d.DialContext(ctx, "unix", socket)
			if err == nil {
				return c, nil
			}
			t := time.NewTimer(dialPoll)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, fmt.Errorf("%w (last: %w)", ctx.Err(), err)
			case <-t.C:
			}
		}
	}
	return sdstest.Dial(ctx, socket, grpc.WithContextDialer(dialer))
}

// dialN opens n connections to socket.
func dialN(ctx context.Context, socket string, n int) ([]*grpc.ClientConn, error) {
	conns := make([]*grpc.ClientConn, 0, n)
	for range n {
		c, err := dial(ctx, socket)
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

func closeAll(conns []*grpc.ClientConn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

// firstCert waits for the first response on st that carries "default"
// and returns it after checking that its chain and key form a TLS pair.
// sdstest has already run ValidateAll on every secret.
func firstCert(ctx context.Context, st *sdstest.Stream) (*sdstest.Response, error) {
	for range 10 {
		resp, err := st.Recv(ctx)
		if err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
		if resp.Secret(sdstest.CertName) == nil {
			continue // a response for other names; Envoy would wait too
		}
		if err := checkPair(resp); err != nil {
			return nil, err
		}
		return resp, nil
	}
	return nil, fmt.Errorf("10 responses without %q", sdstest.CertName)
}

// checkPair checks that resp's "default" chain and key form a TLS pair.
func checkPair(resp *sdstest.Response) error {
	tc := resp.Secret(sdstest.CertName).GetTlsCertificate()
	if tc == nil {
		return fmt.Errorf("%q is not a tls certificate", sdstest.CertName)
	}
	if _, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes()); err != nil {
		return fmt.Errorf("%q chain and key: %w", sdstest.CertName, err)
	}
	return nil
}

// streamSet is a set of SotW streams that each asked for "default", got
// it and ACKed it.
type streamSet struct {
	streams []*sdstest.Stream
	// versions holds each stream's initial response version.
	versions []string
	chain    []byte
}

// openStreams opens n streams spread round robin over conns, all at once,
// and waits until each got its first "default" response and ACKed it.
// ctx bounds the streams' lives; close them with closeStreams.
func openStreams(ctx context.Context, conns []*grpc.ClientConn, n int) (*streamSet, error) {
	set := &streamSet{streams: make([]*sdstest.Stream, n), versions: make([]string, n)}
	errs := make([]error, n)
	chains := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			st, err := sdstest.OpenStream(ctx, conns[i%len(conns)])
			if err != nil {
				errs[i] = err
				return
			}
			set.streams[i] = st
			rctx, cancel := context.WithTimeout(ctx, stepLimit)
			defer cancel()
			if err := st.Request(sdstest.CertName); err != nil {
				errs[i] = err
				return
			}
			resp, err := st.Recv(rctx)
			if err != nil {
				errs[i] = fmt.Errorf("stream %d: first response: %w", i, err)
				return
			}
			sec := resp.Secret(sdstest.CertName)
			if sec == nil {
				errs[i] = fmt.Errorf("stream %d: first response lacks %q: %v", i, sdstest.CertName, resp.Names())
				return
			}
			set.versions[i] = resp.Version
			chains[i] = sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes()
			errs[i] = st.ACK()
		})
	}
	wg.Wait()
	if err := summarizeErrs(errs); err != nil {
		set.close()
		return nil, fmt.Errorf("open %d streams: %w", n, err)
	}
	set.chain = chains[0]
	return set, nil
}

func (s *streamSet) close() {
	for _, st := range s.streams {
		if st != nil {
			st.Close()
		}
	}
}

// summarizeErrs returns nil if every error is nil, else how many failed
// and the first failure (a thousand identical errors say no more).
func summarizeErrs(errs []error) error {
	var first error
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
	}
	if failed == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d failed, first: %w", failed, len(errs), first)
}
