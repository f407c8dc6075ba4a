package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

const (
	// setupLimit bounds opening every stream of rotation_fanout.
	setupLimit = 30 * time.Second
	// fanoutLimit bounds how long a rotation may take to reach every
	// stream after the first got it; past it a stream missed the rotation.
	fanoutLimit = 5 * time.Second
	// rotationSlack is added to the TTL to bound the wait for the next
	// rotation (due at about half the TTL).
	rotationSlack = 5 * time.Second
)

// recvEvent is one response received on one stream of rotation_fanout.
type recvEvent struct {
	stream  int
	version string
	at      time.Time
	chain   []byte
	key     []byte
}

// rotation is what the streams saw of one version of "default".
type rotation struct {
	version     string
	first, last time.Time // first and last receipt
	got         []bool    // per stream
	count       int
	chain, key  []byte
	measured    bool // first seen after every stream had its first response

	published time.Time // from /debug/secrets, or first in fallback
	debugNote string    // set when /debug/secrets disagrees on the version
}

// rotationFanout runs an agent with a short TTL, opens fanoutStreams SotW
// streams over fanoutConns connections, each ACKing every response as
// Envoy does, and measures, for fanoutRotations rotations, the time from
// the agent's publish time of the new "default" to its receipt by the last
// stream.
func (b *bencher) rotationFanout(ctx context.Context) error {
	p := b.p
	a, err := b.startAgent(ctx, defaultKeyType, p.fanoutTTL)
	if err != nil {
		return err
	}
	defer a.kill()
	res, err := b.fanout(a)
	if err != nil {
		return a.failure(err)
	}
	if err := a.stop(stopLimit); err != nil {
		return err
	}

	for _, l := range fanoutLines(p, res) {
		fmt.Fprintln(b.out, l)
	}
	return nil
}

// fanoutLines formats rotation_fanout's figure line and its notes.
func fanoutLines(p params, res *fanoutResult) []string {
	lastLat := make([]time.Duration, len(res.rotations))
	firstLat := make([]time.Duration, len(res.rotations))
	var perRot, got, notes []string
	for i, r := range res.rotations {
		lastLat[i] = r.last.Sub(r.published)
		firstLat[i] = r.first.Sub(r.published)
		perRot = append(perRot, ms(lastLat[i]))
		got = append(got, fmt.Sprint(r.count))
		if r.debugNote != "" {
			notes = append(notes, r.debugNote)
		}
	}
	last, first := summarize(lastLat), summarize(firstLat)
	from := "(measured from the agent's publish time: lastUpdated of default in /debug/secrets)"
	if res.fallback != "" {
		from = "(measured from the FIRST STREAM'S RECEIPT, not the publish time: " + res.fallback + ")"
	}
	lines := []string{fmt.Sprintf("rotation_fanout streams=%d conns=%d rotations=%d median_last_stream=%s max_last_stream=%s median_first_stream=%s per_rotation_last=[%s] got=[%s] setup=%s skipped_during_setup=%d duplicate_responses=%d ttl=%s %s  [target max<=%s: %s]",
		p.fanoutStreams, p.fanoutConns, len(res.rotations), ms(last.median), ms(last.max), ms(first.median),
		strings.Join(perRot, " "), strings.Join(got, " "), res.setup.Round(time.Millisecond), res.skipped, res.duplicates,
		p.fanoutTTL, from, ms(targetFanoutMax), verdict(last.max <= targetFanoutMax))}
	for _, n := range notes {
		lines = append(lines, "# rotation_fanout note: "+n)
	}
	return lines
}

type fanoutResult struct {
	rotations  []*rotation
	setup      time.Duration // from dialling to every stream's first response
	skipped    int           // rotations that happened before every stream was open
	duplicates int           // responses repeating the version a stream had
	fallback   string        // why the publish time is not used, if it is not
}

// fanout opens the streams and collects receipts until fanoutRotations
// rotations measured after setup have reached every stream.
func (b *bencher) fanout(a *agentProc) (*fanoutResult, error) {
	p := b.p
	n := p.fanoutStreams
	sctx, cancel := context.WithCancel(a.ctx)
	defer cancel()
	setupStart := time.Now()
	dctx, dcancel := context.WithTimeout(sctx, stepLimit)
	defer dcancel()
	conns, err := dialN(dctx, a.socket, p.fanoutConns)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)

	events := make(chan recvEvent, n*4)
	errc := make(chan error, n)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for i := range n {
		wg.Go(func() {
			if err := followStream(sctx, conns[i%len(conns)], i, events); err != nil && sctx.Err() == nil {
				errc <- fmt.Errorf("stream %d: %w", i, err)
			}
		})
	}

	res := &fanoutResult{}
	rots := map[string]*rotation{}
	lastVersion := make([]string, n)
	initial := 0
	var readyAt time.Time
	var prevChain []byte
	var prevFirst time.Time                    // first receipt of the previous measured rotation
	nextDeadline := setupStart.Add(setupLimit) // for the next expected event: setup done or a new rotation
	ticker := time.NewTicker(20 * time.Millisecond)
	defer ticker.Stop()

	for complete := 0; complete < p.fanoutRotations; {
		select {
		case ev := <-events:
			if lastVersion[ev.stream] == "" {
				lastVersion[ev.stream] = ev.version
				initial++
				if prevChain == nil {
					prevChain = ev.chain
				}
				if initial == n {
					readyAt = time.Now()
					res.setup = readyAt.Sub(setupStart)
					nextDeadline = readyAt.Add(p.fanoutTTL + rotationSlack)
				}
				continue
			}
			if ev.version == lastVersion[ev.stream] {
				res.duplicates++
				continue
			}
			lastVersion[ev.stream] = ev.version
			r := rots[ev.version]
			if r == nil {
				r = &rotation{version: ev.version, first: ev.at, got: make([]bool, n), chain: ev.chain, key: ev.key, measured: !readyAt.IsZero()}
				rots[ev.version] = r
				if r.measured {
					res.rotations = append(res.rotations, r)
					nextDeadline = ev.at.Add(p.fanoutTTL + rotationSlack)
				} else {
					res.skipped++
				}
			}
			if r.got[ev.stream] {
				return nil, fmt.Errorf("stream %d received version %s twice, with another in between", ev.stream, ev.version)
			}
			if !bytes.Equal(ev.chain, r.chain) {
				return nil, fmt.Errorf("stream %d received version %s with another chain than stream %d", ev.stream, ev.version, firstStream(r))
			}
			r.got[ev.stream] = true
			r.count++
			r.first = minTime(r.first, ev.at)
			r.last = maxTime(r.last, ev.at)
			if !r.measured || r.count < n {
				continue
			}
			complete++
			if err := checkRotated(r, prevChain); err != nil {
				return nil, err
			}
			prevChain = r.chain
			if err := b.setPublished(a, r, prevFirst, res); err != nil {
				return nil, err
			}
			prevFirst = r.first
		case err := <-errc:
			return nil, err
		case <-sctx.Done():
			return nil, errors.New("agent exited during rotation_fanout")
		case now := <-ticker.C:
			for i, r := range res.rotations {
				if r.count < n && now.Sub(r.first) > fanoutLimit {
					return nil, fmt.Errorf("rotation %d (version %s): only %d of %d streams received it within %s of the first (stream %d missed it)",
						i+1, r.version, r.count, n, fanoutLimit, missing(r))
				}
			}
			if now.After(nextDeadline) {
				if readyAt.IsZero() {
					return nil, fmt.Errorf("only %d of %d streams got their first response within %s", initial, n, setupLimit)
				}
				return nil, fmt.Errorf("no rotation seen by any stream within %s (ttl %s) after the previous one or setup; %d of %d measured", p.fanoutTTL+rotationSlack, p.fanoutTTL, len(res.rotations), p.fanoutRotations)
			}
		}
	}
	return res, nil
}

// followStream opens a stream that asks for "default", then receives and
// ACKs every response, reporting each one on events, until ctx ends.
func followStream(ctx context.Context, conn grpc.ClientConnInterface, i int, events chan<- recvEvent) error {
	return followDefault(ctx, conn, func(resp *sdstest.Response, sec *tlsv3.Secret, at time.Time) error {
		tc := sec.GetTlsCertificate()
		ev := recvEvent{stream: i, version: resp.Version, at: at,
			chain: tc.GetCertificateChain().GetInlineBytes(), key: tc.GetPrivateKey().GetInlineBytes()}
		select {
		case events <- ev:
			return nil
		case <-ctx.Done():
			return errStopFollowing
		}
	})
}

// errStopFollowing, returned by followDefault's each, ends it with nil.
var errStopFollowing = errors.New("stop following")

// followDefault opens a stream that asks for "default", then for every
// response, which must carry it, calls each with the response, the secret
// and when it arrived, and ACKs it, until the stream or each fails.
func followDefault(ctx context.Context, conn grpc.ClientConnInterface, each func(resp *sdstest.Response, sec *tlsv3.Secret, at time.Time) error) error {
	st, err := sdstest.OpenStream(ctx, conn)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := st.Request(sdstest.CertName); err != nil {
		return err
	}
	for {
		resp, err := st.Recv(ctx)
		at := time.Now()
		if err != nil {
			return err
		}
		sec := resp.Secret(sdstest.CertName)
		if sec == nil {
			return fmt.Errorf("response %s lacks %q: %v", resp.Version, sdstest.CertName, resp.Names())
		}
		if err := each(resp, sec, at); err != nil {
			if errors.Is(err, errStopFollowing) {
				return nil
			}
			return err
		}
		if err := st.ACK(); err != nil {
			return err
		}
	}
}

// checkRotated checks that r carries a new certificate whose chain and
// key form a TLS pair.
func checkRotated(r *rotation, prevChain []byte) error {
	if bytes.Equal(r.chain, prevChain) {
		return fmt.Errorf("version %s carries the same chain as the previous version", r.version)
	}
	if _, err := tls.X509KeyPair(r.chain, r.key); err != nil {
		return fmt.Errorf("version %s: chain and key: %w", r.version, err)
	}
	return nil
}

// setPublished sets r.published from the lastUpdated of "default" in
// /debug/secrets, or to the first receipt if the endpoint is not served
// (404), and records that in res. The publish time must lie between
// notBefore (the previous rotation's first receipt, if any) and r's first
// receipt.
func (b *bencher) setPublished(a *agentProc, r *rotation, notBefore time.Time, res *fanoutResult) error {
	if res.fallback != "" {
		r.published = r.first
		return nil
	}
	const url = "/debug/secrets"
	code, body, err := a.debugGet(a.ctx, url)
	if err != nil {
		return err
	}
	if code == http.StatusNotFound {
		res.fallback = "GET /debug/secrets answered 404"
		r.published = r.first
		return nil
	}
	if code != http.StatusOK {
		return fmt.Errorf("get %s: status %d: %s", url, code, bytes.TrimSpace(body))
	}
	var dump struct {
		DynamicActiveSecrets []struct {
			Name        string    `json:"name"`
			VersionInfo string    `json:"versionInfo"`
			LastUpdated time.Time `json:"lastUpdated"`
		} `json:"dynamicActiveSecrets"`
	}
	if err := json.Unmarshal(body, &dump); err != nil {
		return fmt.Errorf("get %s: decode: %w", url, err)
	}
	for _, s := range dump.DynamicActiveSecrets {
		if s.Name != sdstest.CertName {
			continue
		}
		if s.LastUpdated.IsZero() {
			return fmt.Errorf("get %s: %q has no lastUpdated", url, sdstest.CertName)
		}
		// Same host, same wall clock: publishing precedes every receipt.
		if s.LastUpdated.After(r.first) {
			return fmt.Errorf("get %s: lastUpdated %s of %q (version %q) is after the first stream received version %s at %s: it is not the publish time of that version",
				url, s.LastUpdated.Format(time.RFC3339Nano), sdstest.CertName, s.VersionInfo, r.version, r.first.Format(time.RFC3339Nano))
		}
		if !notBefore.IsZero() && !s.LastUpdated.After(notBefore) {
			return fmt.Errorf("get %s: lastUpdated %s of %q (version %q) is not after the previous rotation reached the first stream (%s): it is not the publish time of version %s",
				url, s.LastUpdated.Format(time.RFC3339Nano), sdstest.CertName, s.VersionInfo, notBefore.Format(time.RFC3339Nano), r.version)
		}
		if s.VersionInfo != r.version {
			r.debugNote = fmt.Sprintf("/debug/secrets says %q is version %q, streams received %q; used its lastUpdated", sdstest.CertName, s.VersionInfo, r.version)
		}
		r.published = s.LastUpdated
		return nil
	}
	return fmt.Errorf("get %s: no %q in dynamicActiveSecrets", url, sdstest.CertName)
}

func firstStream(r *rotation) int {
	for i, g := range r.got {
		if g {
			return i
		}
	}
	return -1
}

func missing(r *rotation) int {
	for i, g := range r.got {
		if !g {
			return i
		}
	}
	return -1
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
