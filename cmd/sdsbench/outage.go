package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

const (
	// outageTTL is the certificate lifetime asked for in outage_recovery:
	// short, so that an outage reaches expiry in seconds, and long
	// enough that the renewal policy's waits (a share of the time left)
	// are not all at their floor.
	outageTTL = 20 * time.Second
	// outageGraceRatio renews when 95% of the lifetime remains, 1 s
	// after issuance, so that an outage enters the renewal window at
	// once and the whole window (19 s) is there to place outages in.
	outageGraceRatio = "0.95"
	// recoveryLimit bounds the wait for a new certificate after the CA
	// is back; a full backoff (30 s ±50%) plus a CSR fits in it.
	recoveryLimit = 50 * time.Second
	// targetRecoveryMax: the CA is seen within 2 s once the renewal time
	// has passed with 20 s certificates (issue 8), plus the CSR.
	targetRecoveryMax = 2500 * time.Millisecond
)

// outageLefts are the times left on the certificate when the CA comes
// back, one outage each: spread over the renewal window, one in the last
// tenth of the life, one after expiry.
var outageLefts = []time.Duration{
	18 * time.Second, 16 * time.Second, 14 * time.Second, 12 * time.Second, 10 * time.Second,
	8 * time.Second, 6 * time.Second, 4 * time.Second, 1500 * time.Millisecond, -2 * time.Second,
}

// outageResult is one outage of outage_recovery.
type outageResult struct {
	left     time.Duration // time left on the certificate when the CA came back
	recovery time.Duration // CA listening again to the new certificate received
}

// outageRecovery runs one CA and one agent per entry of outageLefts, all
// at once so that the figure takes one outage's time: the agent gets a
// certificate, the CA is stopped (SIGTERM) and started again on the same
// address with the same state when the certificate has the chosen time
// left; the figure is the time from its "listening" log line to an open
// SDS stream receiving the new certificate.
func (b *bencher) outageRecovery(ctx context.Context) error {
	results := make([]outageResult, len(outageLefts))
	errs := make([]error, len(outageLefts))
	var wg sync.WaitGroup
	for i, left := range outageLefts {
		b.seq += 2 // the CA and the agent
		seq := b.seq - 1
		wg.Go(func() {
			results[i], errs[i] = b.outageOnce(ctx, seq, left)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("outage with %s left: %w", left, errs[i])
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	rec := make([]time.Duration, len(results))
	var per []string
	for i, r := range results {
		rec[i] = r.recovery
		per = append(per, fmt.Sprintf("%s:%s", secs(r.left), ms(r.recovery)))
	}
	s := summarize(rec)
	fmt.Fprintf(b.out, "outage_recovery outages=%d median=%s max=%s min=%s per_outage_left_at_ca_back:recovery=[%s] ttl=%s grace_ratio=%s (one CA and agent per outage, in parallel; from the restarted CA's \"listening\" log line to an open stream receiving the new certificate)  [target max<=%s: %s]\n",
		s.n, ms(s.median), ms(s.max), ms(s.min), strings.Join(per, " "), outageTTL, outageGraceRatio,
		ms(targetRecoveryMax), verdict(s.max <= targetRecoveryMax))
	return nil
}

// outageOnce runs the outage of one CA and agent (numbered seq and
// seq+1), CA back with left on the certificate.
func (b *bencher) outageOnce(ctx context.Context, seq int, left time.Duration) (outageResult, error) {
	caBin := b.ca.cmd.Path // the copy of the agent binary the shared CA runs
	dir := filepath.Join(b.tmp, fmt.Sprintf("oca%d", seq))
	ca, err := launchCA(ctx, caBin, dir, "127.0.0.1:0", fmt.Sprintf("sdsagent ca #%d", seq))
	if err != nil {
		return outageResult{}, err
	}
	defer ca.kill()
	var again *devCA // the CA after the outage
	defer func() {
		if again != nil {
			again.kill()
		}
	}()
	a, err := b.startAgentOn(ctx, ca, filepath.Join(b.tmp, fmt.Sprintf("o%d.sock", seq)), seq+1, outageTTL,
		"--grace-ratio", outageGraceRatio, "--grace-jitter", "0")
	if err != nil {
		return outageResult{}, err
	}
	defer a.kill()

	res, err := func() (outageResult, error) {
		sctx, cancel := context.WithCancel(a.ctx)
		defer cancel()
		f, err := follow(sctx, a.socket)
		if err != nil {
			return outageResult{}, err
		}
		defer f.close()
		if _, err := f.next(sctx, nil, stepLimit); err != nil {
			return outageResult{}, fmt.Errorf("first certificate: %w", err)
		}
		if err := ca.stop(stopLimit); err != nil {
			return outageResult{}, err
		}
		// A renewal that was under way when the CA stopped may still
		// arrive: the outage is timed from the last certificate served.
		var base received
		for {
			base = f.latest()
			if err := sleep(sctx, time.Until(base.leaf.NotAfter.Add(-left))); err != nil {
				return outageResult{}, fmt.Errorf("waiting for the outage to end: %w", err)
			}
			if bytes.Equal(f.latest().chain, base.chain) {
				break
			}
		}
		again, err = launchCA(ctx, caBin, dir, ca.addr, fmt.Sprintf("sdsagent ca #%d", seq))
		if err != nil {
			return outageResult{}, fmt.Errorf("restart the CA on %s: %w", ca.addr, err)
		}
		listening := time.Now()
		got, err := f.next(sctx, base.chain, recoveryLimit)
		if err != nil {
			return outageResult{}, fmt.Errorf("new certificate after the CA came back: %w", err)
		}
		return outageResult{left: base.leaf.NotAfter.Sub(listening), recovery: got.at.Sub(listening)}, nil
	}()
	if err != nil {
		return outageResult{}, a.failure(err)
	}
	if err := a.stop(stopLimit); err != nil {
		return outageResult{}, err
	}
	return res, again.stop(stopLimit)
}

// startAgentOn starts `sdsagent run` against ca on socket.
// It does not touch b.seq, so that agents can start concurrently.
func (b *bencher) startAgentOn(ctx context.Context, ca *devCA, socket string, seq int, ttl time.Duration, extra ...string) (*agentProc, error) {
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	p, started, err := startProc(ctx, fmt.Sprintf("sdsagent run #%d", seq), b.p.agent, nil,
		append(ca.agentArgs(socket, httpAddr, defaultKeyType, ttl), extra...)...)
	if err != nil {
		return nil, err
	}
	return &agentProc{proc: p, socket: socket, httpAddr: httpAddr, started: started}, nil
}

// received is one "default" an SDS stream received.
type received struct {
	version string
	chain   []byte
	leaf    *x509.Certificate
	at      time.Time
}

// follower holds one SotW stream for "default" that ACKs every response,
// as Envoy does, and keeps what it received.
type follower struct {
	events chan received
	errc   chan error
	done   chan struct{}
	cancel context.CancelFunc

	mu   sync.Mutex
	last received
}

// follow dials socket and opens the stream.
func follow(ctx context.Context, socket string) (*follower, error) {
	ctx, cancel := context.WithCancel(ctx)
	dctx, dcancel := context.WithTimeout(ctx, stepLimit)
	defer dcancel()
	conn, err := dial(dctx, socket)
	if err != nil {
		cancel()
		return nil, err
	}
	f := &follower{events: make(chan received, 1), errc: make(chan error, 1), done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(f.done)
		defer conn.Close()
		if err := f.run(ctx, conn); err != nil && ctx.Err() == nil {
			f.errc <- err
		}
	}()
	return f, nil
}

func (f *follower) run(ctx context.Context, conn grpc.ClientConnInterface) error {
	return followDefault(ctx, conn, func(resp *sdstest.Response, sec *tlsv3.Secret, at time.Time) error {
		if err := checkPair(resp); err != nil {
			return err
		}
		chain := sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes()
		leaf, err := leafOf(chain)
		if err != nil {
			return err
		}
		r := received{version: resp.Version, chain: chain, leaf: leaf, at: at}
		f.mu.Lock()
		f.last = r
		f.mu.Unlock()
		// Only the latest matters to a reader that fell behind; this
		// goroutine is the only sender, so the second send never blocks.
		select {
		case f.events <- r:
		default:
			select {
			case <-f.events:
			default:
			}
			f.events <- r
		}
		return nil
	})
}

// next waits up to limit for a response whose chain is not old.
func (f *follower) next(ctx context.Context, old []byte, limit time.Duration) (received, error) {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		select {
		case r := <-f.events:
			if !bytes.Equal(r.chain, old) {
				return r, nil
			}
		case err := <-f.errc:
			return received{}, err
		case <-ctx.Done():
			return received{}, ctx.Err()
		case <-timer.C:
			return received{}, fmt.Errorf("no new certificate within %s", limit)
		}
	}
}

// latest returns the last response received.
func (f *follower) latest() received {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

func (f *follower) close() {
	f.cancel()
	<-f.done
}

// leafOf parses the first certificate of a PEM chain.
func leafOf(chain []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(chain)
	if block == nil {
		return nil, errors.New("chain holds no PEM block")
	}
	return x509.ParseCertificate(block.Bytes)
}

// secs formats d in seconds with one decimal.
func secs(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }
