package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// Product targets, printed next to each figure. They are not used to
// shape the measurement.
const (
	targetExecMedian = 50 * time.Millisecond
	targetRequestP99 = 2 * time.Millisecond
	targetFanoutMax  = 100 * time.Millisecond
	targetRSSOneKB   = 20 << 10
	targetRSSManyKB  = 40 << 10
)

const (
	// workloadTTL is long enough that nothing rotates during a figure.
	workloadTTL       = 24 * time.Hour
	defaultKeyType    = "ecdsa-p256"
	comparisonKeyType = "rsa-2048"
)

// execToFirst measures runs executions of `sdsagent run` with keyType:
// from just before cmd.Start to the first SotW response carrying "default"
// that passes ValidateAll and whose chain and key form a TLS pair.
func (b *bencher) execToFirst(ctx context.Context, keyType string, runs int) error {
	times := make([]time.Duration, 0, runs)
	for i := range runs {
		d, err := b.execOnce(ctx, keyType)
		if err != nil {
			return fmt.Errorf("run %d of %d: %w", i+1, runs, err)
		}
		times = append(times, d)
	}
	fmt.Fprintln(b.out, execLine(keyType, times))
	return nil
}

// execLine formats exec_to_first_sds for keyType's run times (at least one).
func execLine(keyType string, times []time.Duration) string {
	s := summarize(times)
	line := fmt.Sprintf("exec_to_first_sds  key=%s runs=%d median=%s p90=%s min=%s max=%s first_run=%s",
		keyType, s.n, ms(s.median), ms(s.p90), ms(s.min), ms(s.max), ms(times[0]))
	if keyType == defaultKeyType {
		line += fmt.Sprintf("  [target median<=%s: %s]", ms(targetExecMedian), verdict(s.median <= targetExecMedian))
	} else {
		line += "  [comparison only]"
	}
	return line
}

// execOnce starts one agent, measures the time to its first valid
// "default" response, then stops it with SIGTERM and checks exit code 0.
func (b *bencher) execOnce(ctx context.Context, keyType string) (time.Duration, error) {
	a, err := b.startAgent(ctx, keyType, workloadTTL)
	if err != nil {
		return 0, err
	}
	defer a.kill()
	d, err := func() (time.Duration, error) {
		rctx, cancel := context.WithTimeout(a.ctx, stepLimit)
		defer cancel()
		conn, err := dial(rctx, a.socket)
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		st, err := sdstest.OpenStream(rctx, conn)
		if err != nil {
			return 0, err
		}
		defer st.Close()
		if err := st.Request(sdstest.CertName); err != nil {
			return 0, err
		}
		if _, err := firstCert(rctx, st); err != nil {
			return 0, err
		}
		return time.Since(a.started), nil
	}()
	if err != nil {
		return 0, a.failure(err)
	}
	return d, a.stop(stopLimit)
}

// requestResponse measures, with latencyStreams SotW streams open and
// ACKed, samples of: open a new stream on an existing connection, request
// "default", receive the response. Then it closes that stream.
func (b *bencher) requestResponse(ctx context.Context) error {
	p := b.p
	a, err := b.startAgent(ctx, defaultKeyType, workloadTTL)
	if err != nil {
		return err
	}
	defer a.kill()
	samples, err := func() ([]time.Duration, error) {
		sctx, cancel := context.WithCancel(a.ctx)
		defer cancel()
		dctx, dcancel := context.WithTimeout(sctx, stepLimit)
		defer dcancel()
		conns, err := dialN(dctx, a.socket, p.latencyConns)
		if err != nil {
			return nil, err
		}
		defer closeAll(conns)
		set, err := openStreams(sctx, conns, p.latencyStreams)
		if err != nil {
			return nil, err
		}
		defer set.close()

		samples := make([]time.Duration, 0, p.latencySamples)
		for i := range p.latencySamples {
			d, err := sample(sctx, conns[i%len(conns)], set.chain)
			if err != nil {
				return nil, fmt.Errorf("sample %d: %w", i, err)
			}
			samples = append(samples, d)
		}
		return samples, nil
	}()
	if err != nil {
		return a.failure(err)
	}
	if err := a.stop(stopLimit); err != nil {
		return err
	}
	s := summarize(samples)
	fmt.Fprintf(b.out, "sds_request_response streams_open=%d conns=%d samples=%d p50=%s p90=%s p99=%s max=%s min=%s  [target p99<=%s: %s]\n",
		p.latencyStreams, p.latencyConns, s.n, us(s.p50), us(s.p90), us(s.p99), us(s.max), us(s.min),
		ms(targetRequestP99), verdict(s.p99 <= targetRequestP99))
	return nil
}

// sample times one new stream's request and response on conn.
func sample(ctx context.Context, conn grpc.ClientConnInterface, wantChain []byte) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, stepLimit)
	defer cancel()
	start := time.Now()
	st, err := sdstest.OpenStream(ctx, conn)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	if err := st.Request(sdstest.CertName); err != nil {
		return 0, err
	}
	resp, err := st.Recv(ctx)
	took := time.Since(start)
	if err != nil {
		return 0, err
	}
	sec := resp.Secret(sdstest.CertName)
	if sec == nil {
		return 0, fmt.Errorf("response lacks %q: %v", sdstest.CertName, resp.Names())
	}
	if !bytes.Equal(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), wantChain) {
		return 0, fmt.Errorf("response carries another chain than the open streams got")
	}
	return took, nil
}

// rss reads the agent's VmRSS and VmHWM with one stream open and with
// rssStreams open, each after every stream got its first response and a
// settling pause. It measures the agent as shipped and, for comparison,
// with --release-startup-memory=false.
func (b *bencher) rss(ctx context.Context) error {
	for _, release := range []bool{true, false} {
		if err := b.rssWith(ctx, release); err != nil {
			return err
		}
	}
	return nil
}

func (b *bencher) rssWith(ctx context.Context, release bool) error {
	p := b.p
	if err := dropPageCache(p.agent); err != nil {
		return err
	}
	a, err := b.startAgent(ctx, defaultKeyType, workloadTTL, fmt.Sprintf("--release-startup-memory=%t", release))
	if err != nil {
		return err
	}
	defer a.kill()
	var lines []string
	err = func() error {
		sctx, cancel := context.WithCancel(a.ctx)
		defer cancel()
		dctx, dcancel := context.WithTimeout(sctx, stepLimit)
		defer dcancel()
		first, err := dialN(dctx, a.socket, 1)
		if err != nil {
			return err
		}
		defer closeAll(first)
		one, err := openStreams(sctx, first, 1)
		if err != nil {
			return err
		}
		defer one.close()
		if err := sleep(sctx, p.rssSettle); err != nil {
			return err
		}
		m, err := a.status()
		if err != nil {
			return err
		}
		line := fmt.Sprintf("rss_kb release_startup_memory=%t page_cache=cold streams=1 conns=1 value=%d hwm=%d anon=%d file=%d settle=%s  [target <=%d kB: %s]",
			release, m.rss, m.hwm, m.anon, m.file, p.rssSettle, targetRSSOneKB, verdict(m.rss <= targetRSSOneKB))
		if !release {
			line += idleVerdict(m)
		}
		lines = append(lines, line)

		more, err := dialN(dctx, a.socket, p.rssConns-1)
		if err != nil {
			return err
		}
		defer closeAll(more)
		rest, err := openStreams(sctx, append(more, first...), p.rssStreams-1)
		if err != nil {
			return err
		}
		defer rest.close()
		if err := sleep(sctx, p.rssSettle); err != nil {
			return err
		}
		m, err = a.status()
		if err != nil {
			return err
		}
		lines = append(lines, fmt.Sprintf("rss_kb release_startup_memory=%t page_cache=cold streams=%d conns=%d value=%d hwm=%d anon=%d file=%d settle=%s  [target <=%d kB: %s]",
			release, p.rssStreams, p.rssConns, m.rss, m.hwm, m.anon, m.file, p.rssSettle, targetRSSManyKB, verdict(m.rss <= targetRSSManyKB)))
		return nil
	}()
	if err != nil {
		return a.failure(err)
	}
	if err := a.stop(stopLimit); err != nil {
		return err
	}
	fmt.Fprintln(b.out, strings.Join(lines, "\n"))
	return nil
}

// Issue 13's idle targets, without --release-startup-memory: the binary's
// pages are shared and cheap, the heap is not, and a figure that depends
// on paging the binary out is not the headline.
const (
	targetIdleAnonKB = 5 << 10
	targetIdleRSSKB  = 15 << 10
)

// idleVerdict says whether an idle agent's memory m met the idle targets.
func idleVerdict(m memory) string {
	return fmt.Sprintf("  [idle target anon<=%d kB: %s, VmRSS<=%d kB: %s]",
		targetIdleAnonKB, verdict(m.anon <= targetIdleAnonKB), targetIdleRSSKB, verdict(m.rss <= targetIdleRSSKB))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
