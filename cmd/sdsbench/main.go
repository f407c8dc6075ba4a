// Command sdsbench measures a built sdsagent binary the way Envoy uses it:
// it starts the development CA (`sdsagent ca`) once, then runs real
// `sdsagent run` processes against it and talks SDS to them over their Unix
// sockets with the Envoy-like client of package sdstest.
//
// It prints one line per figure with the configuration used:
//
//	exec_to_first_sds     exec of `sdsagent run` to the first valid "default" response
//	sds_request_response  new stream, request, response, with other streams open
//	rotation_fanout       a rotated certificate reaching every open stream
//	rss_kb                the agent's resident memory with 1 and with many streams
//	outage_recovery       the CA back after an outage to the new certificate on SDS
//	restart_reconnect     exec of a restarted agent to Envoy's reconnected stream
//	                      (sending its last version_info) receiving a certificate
//	log_flood             the agent's log output and CPU under hostile requests
//	limit_*               what the agent holds when a client asks for too much
//	churn                 goroutines, fds and memory around connection churn
//	conns_new             1, 100 and 1,000 new connections answered, as a
//	                      ratio to the floor server (cmd/sdsbench/floor)
//	conn_rss_kb           RssAnon and RssFile with 1 and 1,000 connections,
//	                      agent beside the floor server
//	init_time             time before main (inittrace sum), exec to exit and
//	                      CPU of `sdsagent version` beside the floor server
//	                      and a hello-world
//	binary_size           the binaries' sizes
//	cold_start            exec to first response of the agent and of the
//	                      floor server, and a CSR round trip to the CA
//	peers_*               with -peer-agent and -peer-server: memory, new
//	                      connections, request latency and binary sizes of
//	                      the floor server, the agent and spire-agent v1.13.3
//	                      in one run, with the ratios between them
//
// Usage:
//
//	go run ./cmd/sdsbench -agent bin/sdsagent [-floor bin/sdsfloor] [-runs N] [-rotations K] [-quick] [-only LIST]
//	    [-peer-agent spire-agent -peer-server spire-server]
//
// -only runs a comma-separated subset of exec, request, fanout, rss,
// conns, connmem, outage_recovery, restart_reconnect, logflood, limits,
// churn, init, coldstart and peers (which needs -peer-agent and
// -peer-server, and which those two add to any run). -quick runs only the
// first four unless -only names others. Without -floor, the floor server is built with go build (run
// sdsbench from the module).
//
// Every process it starts is in its own process group, killed on any
// error, and every temporary file is removed. It exits 1 if a measurement
// fails (for example a stream missed a rotation) and 2 on bad flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// overallLimit bounds a whole run, so that a hang fails with a message
// instead of running forever. A full run takes well under it; the
// logflood, limits and churn figures add hostileLimit.
const overallLimit = 240 * time.Second

var errOverLimit = fmt.Errorf("the whole run took over its limit (%s, plus %s with logflood, limits or churn, plus %s with conns or connmem, plus %s with peers)", overallLimit, hostileLimit, floorLimit, peersLimit)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// params are the sizes of one benchmark run.
type params struct {
	agent string
	quick bool

	execRuns    int // exec_to_first_sds runs with ECDSA P-256
	execRunsRSA int // the same with RSA 2048, for comparison

	latencyStreams int // streams kept open while sampling
	latencyConns   int
	latencySamples int

	fanoutStreams   int
	fanoutConns     int
	fanoutRotations int
	fanoutTTL       time.Duration

	rssStreams int
	rssConns   int
	rssSettle  time.Duration

	// floor is the floor server's binary; empty: built with go build.
	floor string
	// peerAgent and peerServer are spire-agent's and spire-server's
	// binaries, for the peers figure.
	peerAgent, peerServer string

	// only holds the keys of the figures to run (see figureKeys).
	only map[string]bool
}

func defaultParams(quick bool) params {
	if quick {
		return params{
			execRuns: 3, execRunsRSA: 1,
			latencyStreams: 100, latencyConns: 10, latencySamples: 200,
			fanoutStreams: 200, fanoutConns: 10, fanoutRotations: 1, fanoutTTL: 4 * time.Second,
			rssStreams: 200, rssConns: 10, rssSettle: 300 * time.Millisecond,
		}
	}
	return params{
		execRuns: 20, execRunsRSA: 5,
		latencyStreams: 100, latencyConns: 10, latencySamples: 1000,
		fanoutStreams: 1000, fanoutConns: 10, fanoutRotations: 5, fanoutTTL: 4 * time.Second,
		// The agent releases its startup pages 2 s after its first
		// certificate; 3 s measures the steady state a sidecar lives in.
		rssStreams: 1000, rssConns: 10, rssSettle: 3 * time.Second,
	}
}

// run parses args, runs every figure and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sdsbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	agent := fs.String("agent", "", "path of the built sdsagent binary (required), e.g. bin/sdsagent")
	floor := fs.String("floor", "", "path of the built floor server (cmd/sdsbench/floor); default: go build it")
	runs := fs.Int("runs", 20, "exec_to_first_sds runs with ECDSA P-256 (RSA 2048 gets a quarter, at least 1); -quick: 3")
	rotations := fs.Int("rotations", 5, "rotations measured by rotation_fanout; -quick: 1")
	peerAgent := fs.String("peer-agent", "", "path of spire-agent v1.13.3 (make peer-tools builds it); adds the peers figure")
	peerServer := fs.String("peer-server", "", "path of spire-server v1.13.3, with -peer-agent")
	quick := fs.Bool("quick", false, "smaller run for tests: fewer runs, samples, streams and rotations")
	only := fs.String("only", "", "comma-separated figures to run: "+strings.Join(figureKeys, ",")+","+peersKey+" (default all but "+peersKey+"; -quick: "+strings.Join(quickKeys, ",")+")")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *agent == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "sdsbench: -agent PATH is required and no arguments are taken; build the agent with `make build`")
		return 2
	}
	p := defaultParams(*quick)
	p.agent = *agent
	p.floor = *floor
	p.peerAgent, p.peerServer = *peerAgent, *peerServer
	p.quick = *quick
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["runs"] || !*quick {
		p.execRuns = *runs
		p.execRunsRSA = max(1, *runs/4)
	}
	if set["rotations"] || !*quick {
		p.fanoutRotations = *rotations
	}
	if p.execRuns < 1 || p.fanoutRotations < 1 {
		fmt.Fprintln(stderr, "sdsbench: -runs and -rotations must be at least 1")
		return 2
	}
	var err error
	if p.only, err = parseOnly(*only, *quick); err != nil {
		fmt.Fprintf(stderr, "sdsbench: %v\n", err)
		return 2
	}
	if p.peerAgent != "" || p.peerServer != "" {
		p.only[peersKey] = true
	}
	if p.only[peersKey] && (p.peerAgent == "" || p.peerServer == "") {
		fmt.Fprintf(stderr, "sdsbench: %v\n", errNoPeer)
		return 2
	}

	parent := ctx
	ctx, cancel := context.WithTimeoutCause(ctx, p.limit(), errOverLimit)
	defer cancel()
	if err := bench(ctx, p, stdout, stderr); err != nil {
		switch {
		case parent.Err() != nil:
			err = fmt.Errorf("interrupted: %w", err)
		case errors.Is(context.Cause(ctx), errOverLimit):
			err = fmt.Errorf("%w: %w", errOverLimit, err)
		}
		fmt.Fprintf(stderr, "sdsbench: FAILED: %v\n", err)
		return 1
	}
	return 0
}

// bench starts the CA, runs the figures in order and cleans up.
func bench(ctx context.Context, p params, stdout, stderr io.Writer) (err error) {
	if fi, err := os.Stat(p.agent); err != nil {
		return fmt.Errorf("agent binary: %w (build it with `make build`)", err)
	} else if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("agent binary %s: not an executable file (build it with `make build`)", p.agent)
	}
	if err := raiseFDLimit(4 * (p.fanoutStreams + p.rssStreams + 256)); err != nil {
		fmt.Fprintf(stderr, "sdsbench: warning: %v\n", err)
	}
	tmp, err := os.MkdirTemp("", "sdsb")
	if err != nil {
		return err
	}
	defer func() {
		if rmErr := os.RemoveAll(tmp); rmErr != nil && err == nil {
			err = fmt.Errorf("remove temp dir: %w", rmErr)
		}
	}()

	version, _ := exec.CommandContext(ctx, p.agent, "version").Output()
	fmt.Fprintf(stdout, "# sdsbench agent=%s (%s) go=%s cpus=%d quick=%v\n",
		p.agent, strings.TrimSpace(string(version)), runtime.Version(), runtime.NumCPU(), p.quick)

	ca, err := startCA(ctx, p.agent, tmp)
	if err != nil {
		return err
	}
	defer ca.kill()
	b := &bencher{p: p, tmp: tmp, ca: ca, out: stdout}

	steps := []struct {
		key, name string
		fn        func(context.Context) error
	}{
		{"exec", "exec_to_first_sds " + defaultKeyType, func(ctx context.Context) error { return b.execToFirst(ctx, defaultKeyType, p.execRuns) }},
		{"exec", "exec_to_first_sds " + comparisonKeyType, func(ctx context.Context) error { return b.execToFirst(ctx, comparisonKeyType, p.execRunsRSA) }},
		{"request", "sds_request_response", b.requestResponse},
		{"fanout", "rotation_fanout", b.rotationFanout},
		{"rss", "rss_kb", b.rss},
		{"conns", "conns_new", b.connsFigure},
		{"connmem", "conn_rss_kb", b.connMemFigure},
		{"outage_recovery", "outage_recovery", b.outageRecovery},
		{"restart_reconnect", "restart_reconnect", b.restartReconnect},
		{"logflood", "log_flood", b.logFlood},
		{"limits", "limits", b.limits},
		{"churn", "churn", b.churn},
		{"init", "init_time", func(ctx context.Context) error { return b.initTime(ctx, b.floorBinary) }},
		{"coldstart", "cold_start", b.coldStart},
		{peersKey, "peers", b.peers},
	}
	for _, s := range steps {
		if !p.only[s.key] {
			continue
		}
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	if err := ca.stop(stopLimit); err != nil {
		return err
	}
	return nil
}

// raiseFDLimit raises the soft RLIMIT_NOFILE to at least want (up to the
// hard limit). Streams share connections, so the need is modest.
func raiseFDLimit(want int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("get fd limit: %w", err)
	}
	if lim.Cur >= uint64(want) {
		return nil
	}
	lim.Cur = min(uint64(want), lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise fd limit to %d: %w", lim.Cur, err)
	}
	if lim.Cur < uint64(want) {
		return fmt.Errorf("fd limit is %d (hard limit), wanted %d", lim.Cur, want)
	}
	return nil
}
