package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/caclient"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// targetColdRatio is issue 13's cold-start target: the agent's exec to
// first response within this multiple of the floor server's, plus the
// CSR round trip that the floor does not make.
const targetColdRatio = 1.3

// coldStart measures, taking turns, runs times each: the floor server's
// exec to its first "default" response; one CSR round trip to the CA from
// a fresh client (connection, TLS handshake and signing, as the agent
// makes it when it starts); and the agent's exec to its first valid
// "default" response (as exec_to_first_sds). It prints the medians and
// judges the agent against targetColdRatio × floor + CSR round trip.
func (b *bencher) coldStart(ctx context.Context) error {
	runs := b.p.execRuns
	floorBin, err := b.floorBinary(ctx)
	if err != nil {
		return err
	}
	resp, err := floorResponse()
	if err != nil {
		return err
	}
	respFile := filepath.Join(b.tmp, "cold.resp")
	if err := os.WriteFile(respFile, resp, 0o600); err != nil {
		return err
	}
	var floorT, csrT, agentT []time.Duration
	for i := range runs {
		d, err := b.floorExecOnce(ctx, floorBin, respFile)
		if err != nil {
			return fmt.Errorf("floor run %d of %d: %w", i+1, runs, err)
		}
		floorT = append(floorT, d)
		if d, err = b.csrOnce(ctx); err != nil {
			return fmt.Errorf("csr run %d of %d: %w", i+1, runs, err)
		}
		csrT = append(csrT, d)
		if d, err = b.execOnce(ctx, defaultKeyType); err != nil {
			return fmt.Errorf("agent run %d of %d: %w", i+1, runs, err)
		}
		agentT = append(agentT, d)
	}
	fmt.Fprintln(b.out, coldLine(runs, summarize(agentT).median, summarize(floorT).median, summarize(csrT).median))
	return nil
}

// coldLine formats cold_start from the medians.
func coldLine(runs int, agent, floor, csr time.Duration) string {
	bound := time.Duration(targetColdRatio*float64(floor)) + csr
	return fmt.Sprintf("cold_start  runs=%d median  agent=%s floor=%s csr_round_trip=%s  agent/floor=%s  %.1fx floor + csr=%s  [target agent<=%.1fx floor + csr: %s]",
		runs, ms(agent), ms(floor), ms(csr), ratio(agent, floor), targetColdRatio, ms(bound), targetColdRatio, verdict(agent <= bound))
}

// floorExecOnce starts the floor server and returns the time from just
// before its exec to the first "default" response, a valid key pair.
func (b *bencher) floorExecOnce(ctx context.Context, bin, respFile string) (time.Duration, error) {
	b.seq++
	socket := filepath.Join(b.tmp, fmt.Sprintf("c%d.sock", b.seq))
	p, started, err := startProc(ctx, fmt.Sprintf("floor #%d", b.seq), bin, nil, "-socket", socket, "-response", respFile)
	if err != nil {
		return 0, err
	}
	defer p.kill()
	rctx, cancel := context.WithTimeout(p.ctx, stepLimit)
	defer cancel()
	conn, err := dial(rctx, socket)
	if err != nil {
		return 0, p.failure(err)
	}
	defer conn.Close()
	st, err := sdstest.OpenStream(rctx, conn)
	if err != nil {
		return 0, p.failure(err)
	}
	defer st.Close()
	if err := st.Request(sdstest.CertName); err != nil {
		return 0, p.failure(err)
	}
	if _, err := firstCert(rctx, st); err != nil {
		return 0, p.failure(err)
	}
	return time.Since(started), nil
}

// csrOnce signs one CSR with a new client of the CA, which connects and
// handshakes first, and returns the time of Sign.
func (b *bencher) csrOnce(ctx context.Context) (time.Duration, error) {
	c, err := caclient.New(caclient.Config{
		Addr:         b.ca.addr,
		RootCertFile: filepath.Join(b.ca.dir, "root-cert.pem"),
		TokenFile:    filepath.Join(b.ca.dir, "token"),
		Logger:       zap.NewNop(),
	})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	key, err := pki.GenerateKey(defaultKeyType)
	if err != nil {
		return 0, err
	}
	id, err := pki.WorkloadID("cluster.local", "default", "default")
	if err != nil {
		return 0, err
	}
	csr, err := pki.NewCSR(key, id)
	if err != nil {
		return 0, err
	}
	sctx, cancel := context.WithTimeout(ctx, stepLimit)
	defer cancel()
	start := time.Now()
	if _, err := c.Sign(sctx, csr, workloadTTL); err != nil {
		return 0, b.ca.failure(err)
	}
	return time.Since(start), nil
}
