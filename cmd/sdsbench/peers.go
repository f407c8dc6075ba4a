package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
)

// peersKey is the -only key of the figures against spire-agent. It is in
// no default set, since it needs SPIRE's binaries: -peer-agent and
// -peer-server add it, and make bench-peers runs it alone.
const peersKey = "peers"

// peersLimit is the time the peers figure adds to overallLimit: SPIRE's
// start, the memory settles and three servers' conns and latencies take
// about two minutes.
const peersLimit = 240 * time.Second

// peerNames are the servers the peers figure compares, in print order.
var peerNames = [3]string{"floor", "agent", "spire"}

// peerTarget is one server the peers figure loads.
type peerTarget struct {
	name   string
	socket string
	proc   *proc
}

// peers runs the same load against the floor server, sdsagent and
// spire-agent, all running at once, and prints every figure and the
// ratios spire/floor, agent/floor and agent/spire: memory idle and with
// 1 and 1,000 connections (RssAnon and RssFile apart), new connections
// answered (1, 100, 1,000), request latency with latencyStreams open,
// and the binaries' sizes.
func (b *bencher) peers(ctx context.Context) error {
	f, err := b.startFloor(ctx)
	if err != nil {
		return err
	}
	defer f.kill()
	a, err := b.startServing(ctx)
	if err != nil {
		return err
	}
	defer a.kill()
	s, err := b.startSpire(ctx)
	if err != nil {
		return err
	}
	defer s.kill()
	targets := [3]peerTarget{
		{name: peerNames[0], socket: f.socket, proc: f.proc},
		{name: peerNames[1], socket: a.socket, proc: a.proc},
		{name: peerNames[2], socket: s.socket, proc: s.agent},
	}
	fail := func(t peerTarget, err error) error { return t.proc.failure(fmt.Errorf("%s: %w", t.name, err)) }

	var lines []string
	mem, err := b.peerMemory(ctx, targets, fail)
	if err != nil {
		return err
	}
	lines = append(lines, mem...)
	conns, err := b.peerConns(ctx, targets, fail)
	if err != nil {
		return err
	}
	lines = append(lines, conns...)
	lat, err := b.peerLatency(ctx, targets, fail)
	if err != nil {
		return err
	}
	lines = append(lines, lat)
	size, err := b.peerSizes(ctx)
	if err != nil {
		return err
	}
	lines = append(lines, size)

	for _, p := range []*proc{s.agent, s.server, a.proc, f.proc} {
		if err := p.stop(stopLimit); err != nil {
			return err
		}
	}
	for _, l := range lines {
		fmt.Fprintln(b.out, l)
	}
	return nil
}

// peerMemory reads each server's RssAnon and RssFile idle (no client
// connected, after rssSettle), then with 1 and connMemConns connections
// that each hold an ACKed stream (heldWith).
func (b *bencher) peerMemory(ctx context.Context, ts [3]peerTarget, fail func(peerTarget, error) error) ([]string, error) {
	if err := sleep(ctx, b.p.rssSettle); err != nil {
		return nil, err
	}
	var idle [3]memory
	var held [3][2]memory
	for i, t := range ts {
		m, err := t.proc.status()
		if err != nil {
			return nil, fail(t, err)
		}
		idle[i] = m
	}
	for i, t := range ts {
		h, err := b.heldWith(t.proc.ctx, t.proc, t.socket)
		if err != nil {
			return nil, fail(t, err)
		}
		held[i] = h
	}
	pick := func(state string, m func(i int) memory) string {
		var anon, file [3]float64
		for i := range ts {
			anon[i], file[i] = float64(m(i).anon), float64(m(i).file)
		}
		return fmt.Sprintf("peers_rss_kb %s  anon %s  %s  file %s  %s", state,
			peerValues(anon, "%.0f"), peerRatios(anon), peerValues(file, "%.0f"), peerRatios(file))
	}
	return []string{
		pick("conns=0", func(i int) memory { return idle[i] }),
		pick("conns=1", func(i int) memory { return held[i][0] }),
		pick(fmt.Sprintf("conns=%d", connMemConns), func(i int) memory { return held[i][1] }),
	}, nil
}

// peerConns measures answering 1, 100 and 1,000 new connections on each
// server (newConnTimes), the bursts rotating which server goes first.
func (b *bencher) peerConns(ctx context.Context, ts [3]peerTarget, fail func(peerTarget, error) error) ([]string, error) {
	var lines []string
	for _, burst := range b.connBursts() {
		var times [3][]time.Duration
		for rep := range burst.reps {
			for k := range ts {
				i := (rep + k) % len(ts)
				d, err := newConnTimes(ctx, ts[i].socket, burst.n)
				if err != nil {
					return nil, fail(ts[i], fmt.Errorf("%d new connections: %w", burst.n, err))
				}
				times[i] = append(times[i], d...)
			}
		}
		var med, p90 [3]float64
		for i := range ts {
			s := summarize(times[i])
			med[i], p90[i] = msf(s.median), msf(s.p90)
		}
		lines = append(lines, fmt.Sprintf("peers_conns_new n=%d bursts=%d  median_ms %s  %s  p90_ms %s",
			burst.n, burst.reps, peerValues(med, "%.2f"), peerRatios(med), peerValues(p90, "%.2f")))
	}
	return lines, nil
}

// peerLatency opens latencyConns connections with latencyStreams ACKed
// streams on each server, then takes latencySamples samples (a new
// stream, a request, its response) from each, in turns.
func (b *bencher) peerLatency(ctx context.Context, ts [3]peerTarget, fail func(peerTarget, error) error) (string, error) {
	p := b.p
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var sets [3]*streamSet
	var samples [3][]time.Duration
	var conns [3][]*grpc.ClientConn
	defer func() {
		for i := range ts {
			if sets[i] != nil {
				sets[i].close()
			}
			closeAll(conns[i])
		}
	}()
	for i, t := range ts {
		dctx, dcancel := context.WithTimeout(ctx, stepLimit)
		c, err := dialN(dctx, t.socket, p.latencyConns)
		dcancel()
		if err != nil {
			return "", fail(t, err)
		}
		conns[i] = c
		if sets[i], err = openStreams(ctx, c, p.latencyStreams); err != nil {
			return "", fail(t, err)
		}
	}
	for n := range p.latencySamples {
		for k := range ts {
			i := (n + k) % len(ts)
			d, err := sample(ctx, conns[i][n%len(conns[i])], sets[i].chain)
			if err != nil {
				return "", fail(ts[i], fmt.Errorf("sample %d: %w", n, err))
			}
			samples[i] = append(samples[i], d)
		}
	}
	var p50, p99 [3]float64
	for i := range ts {
		s := summarize(samples[i])
		p50[i], p99[i] = msf(s.p50), msf(s.p99)
	}
	return fmt.Sprintf("peers_request_response streams_open=%d conns=%d samples=%d  p50_ms %s  %s  p99_ms %s  %s",
		p.latencyStreams, p.latencyConns, p.latencySamples,
		peerValues(p50, "%.3f"), peerRatios(p50), peerValues(p99, "%.3f"), peerRatios(p99)), nil
}

// peerSizes prints the sizes of the floor, sdsagent, spire-agent and
// spire-server binaries.
func (b *bencher) peerSizes(ctx context.Context) (string, error) {
	floor, err := b.floorBinary(ctx)
	if err != nil {
		return "", err
	}
	var parts []string
	var sizes [3]float64
	for i, bin := range []struct{ name, path string }{
		{"floor", floor}, {"agent", b.p.agent}, {"spire_agent", b.p.peerAgent}, {"spire_server", b.p.peerServer},
	} {
		fi, err := os.Stat(bin.path)
		if err != nil {
			return "", fmt.Errorf("binary size: %w", err)
		}
		mb := float64(fi.Size()) / (1 << 20)
		if i < len(sizes) {
			sizes[i] = mb
		}
		parts = append(parts, fmt.Sprintf("%s=%.1fMB", bin.name, mb))
	}
	return "peers_binary_size " + strings.Join(parts, " ") + "  " + peerRatios(sizes), nil
}

// peerValues formats one value per server: "floor=1 agent=2 spire=3".
func peerValues(v [3]float64, format string) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = peerNames[i] + "=" + fmt.Sprintf(format, x)
	}
	return strings.Join(parts, " ")
}

// peerRatios formats spire/floor, agent/floor and agent/spire of v
// (floor, agent, spire).
func peerRatios(v [3]float64) string {
	r := func(a, b float64) string {
		if b <= 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.2fx", a/b)
	}
	return fmt.Sprintf("spire/floor=%s agent/floor=%s agent/spire=%s", r(v[2], v[0]), r(v[1], v[0]), r(v[1], v[2]))
}

// msf is d in milliseconds.
func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
