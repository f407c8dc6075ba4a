package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

const (
	// restartRuns is how many restarts restart_reconnect measures.
	restartRuns = 5
	// reconnectLimit bounds the wait for the restarted agent's answer to
	// a client that sends the previous agent's version; past it the run
	// counts as unanswered (Envoy would wait forever).
	reconnectLimit = 5 * time.Second
)

// held is an Envoy-like client's stream with one agent, after it accepted
// "default".
type held struct {
	conn    *grpc.ClientConn
	stream  *sdstest.Stream
	version string // the version_info it ACKed
	chain   []byte
}

func (h *held) close() {
	if h.stream != nil {
		h.stream.Close()
	}
	if h.conn != nil {
		_ = h.conn.Close()
	}
}

// restartReconnect measures what Envoy sees when its agent restarts: a
// client holds a stream for "default" and has ACKed it; the agent is
// killed (SIGKILL) and started again on the same socket; the client
// reconnects at once and sends, as Envoy does, a first request with the
// version_info it last accepted and its resource names. The figure is
// the time from the new agent's exec to that stream receiving the new
// certificate.
func (b *bencher) restartReconnect(ctx context.Context) error {
	socket := filepath.Join(b.tmp, "restart.sock")
	b.seq++
	a, err := b.startAgentOn(ctx, b.ca, socket, b.seq, workloadTTL)
	if err != nil {
		return err
	}
	defer func() { a.kill() }()
	first, err := holdStream(a, "")
	if err != nil {
		return a.failure(err)
	}
	h := first.held
	defer func() { h.close() }()

	var (
		times       []time.Duration
		unanswered  int
		sameVersion int
		versions    []string
	)
	for i := range restartRuns {
		a.kill()
		h.close()
		b.seq++
		a, err = b.startAgentOn(ctx, b.ca, socket, b.seq, workloadTTL)
		if err != nil {
			return err
		}
		next, err := holdStream(a, h.version)
		switch {
		case errors.Is(err, errUnanswered):
			unanswered++
			versions = append(versions, h.version+"->none")
			// Carry on with a client that asks afresh, so that the next
			// run has a version to send.
			if next, err = holdStream(a, ""); err != nil {
				return a.failure(fmt.Errorf("run %d: fresh stream after an unanswered reconnect: %w", i+1, err))
			}
		case err != nil:
			return a.failure(fmt.Errorf("run %d: %w", i+1, err))
		default:
			times = append(times, next.at.Sub(a.started))
			if bytes.Equal(next.chain, h.chain) {
				return a.failure(fmt.Errorf("run %d: the restarted agent served the killed agent's certificate", i+1))
			}
			if next.version == h.version {
				sameVersion++
			}
			versions = append(versions, h.version+"->"+next.version)
		}
		h = next.held
	}
	if err := a.stop(stopLimit); err != nil {
		return err
	}
	line := fmt.Sprintf("restart_reconnect runs=%d answered=%d", restartRuns, len(times))
	if len(times) > 0 {
		s := summarize(times)
		line += fmt.Sprintf(" median=%s max=%s min=%s", ms(s.median), ms(s.max), ms(s.min))
	}
	line += fmt.Sprintf(" same_version_as_before=%d versions=[%s] (SIGKILL, exec of the new agent on the same socket to the reconnected stream, which sent the last ACKed version_info, receiving the new certificate; unanswered: none within %s)",
		sameVersion, strings.Join(versions, " "), reconnectLimit)
	ok := unanswered == 0 && len(times) > 0 && summarize(times).median <= targetExecMedian
	line += fmt.Sprintf("  [target every run answered, median<=%s (as exec_to_first_sds): %s]", ms(targetExecMedian), verdict(ok))
	fmt.Fprintln(b.out, line)
	return nil
}

// errUnanswered says the agent did not answer a reconnecting client.
var errUnanswered = errors.New("no answer")

// reconnected is a held stream and when it received its certificate.
type reconnected struct {
	*held
	at time.Time
}

// holdStream dials a's socket as soon as it exists, opens a stream whose
// first request carries version (empty: a fresh client) and "default",
// waits for a response with "default" whose chain and key form a pair
// (sdstest has run ValidateAll on it) and ACKs it. With a version, no
// answer within reconnectLimit is errUnanswered.
func holdStream(a *agentProc, version string) (*reconnected, error) {
	limit := stepLimit
	if version != "" {
		limit = reconnectLimit
	}
	ctx, cancel := context.WithTimeout(a.ctx, limit)
	defer cancel()
	conn, err := dial(ctx, a.socket)
	if err != nil {
		return nil, err
	}
	h := &held{conn: conn}
	ok := false
	defer func() {
		if !ok {
			h.close()
		}
	}()
	// The stream lives as long as the agent; ctx only bounds the wait.
	if h.stream, err = sdstest.OpenStream(a.ctx, conn); err != nil {
		return nil, err
	}
	if err := h.stream.Send(&discoveryv3.DiscoveryRequest{
		VersionInfo:   version,
		ResourceNames: []string{sdstest.CertName},
		TypeUrl:       resource.SecretType,
		Node:          sdstest.DefaultNode(),
	}); err != nil {
		return nil, err
	}
	resp, err := firstCert(ctx, h.stream)
	at := time.Now()
	if err != nil {
		if version != "" && errors.Is(err, context.DeadlineExceeded) && a.ctx.Err() == nil {
			return nil, errUnanswered
		}
		return nil, err
	}
	if err := h.stream.ACK(); err != nil {
		return nil, err
	}
	h.version = resp.Version
	h.chain = resp.Secret(sdstest.CertName).GetTlsCertificate().GetCertificateChain().GetInlineBytes()
	ok = true
	return &reconnected{held: h, at: at}, nil
}
