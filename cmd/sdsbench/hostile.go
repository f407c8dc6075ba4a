package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// hostileLimit is the time the logflood, limits and churn figures add to
// overallLimit; together they take about four minutes (churn runs twice).
const hostileLimit = 360 * time.Second

// targetLogBytesPerSec is issue 9's target: whatever one client sends,
// the logs it causes stay under 64 KB/s.
const targetLogBytesPerSec = 64 << 10

// limit is the time limit of a run of p's figures.
func (p params) limit() time.Duration {
	limit := overallLimit
	if p.only["logflood"] || p.only["limits"] || p.only["churn"] {
		limit += hostileLimit
	}
	if p.only["conns"] || p.only["connmem"] {
		limit += floorLimit
	}
	if p.only[peersKey] {
		limit += peersLimit
	}
	return limit
}

// hostileSizes are the sizes of the logflood, limits and churn figures.
type hostileSizes struct {
	floodNames    int           // unknown names per request
	floodFor      time.Duration // how long the unknown-names client runs
	longFor       time.Duration // how long each long-name client runs
	fileRoots     int           // distinct file-root: names on one stream
	halfOpen      int           // connections that never send the HTTP/2 preface
	halfOpenWait  time.Duration // how long to wait for the agent to close them
	streamsOnConn int           // streams opened on one connection
	churnConns    int           // connections per churn round
	churnRounds   int
	churnSettle   time.Duration // wait after the last round
}

func (b *bencher) sizes() hostileSizes {
	if b.p.quick {
		return hostileSizes{floodNames: 1000, floodFor: time.Second, longFor: time.Second,
			fileRoots: 100, halfOpen: 20, halfOpenWait: 2 * time.Second, streamsOnConn: 100,
			churnConns: 200, churnRounds: 1, churnSettle: 2 * time.Second}
	}
	return hostileSizes{floodNames: 1000, floodFor: 10 * time.Second, longFor: 5 * time.Second,
		fileRoots: 3000, halfOpen: 500, halfOpenWait: 20 * time.Second, streamsOnConn: 1000,
		churnConns: 5000, churnRounds: 3, churnSettle: 30 * time.Second}
}

// startServing starts an agent with extra flags and waits until it
// serves "default" on a stream, which it then closes.
func (b *bencher) startServing(ctx context.Context, extra ...string) (*agentProc, error) {
	return b.startServingEnv(ctx, nil, extra...)
}

// startServingEnv is startServing with env (KEY=value) added to the
// agent's environment.
func (b *bencher) startServingEnv(ctx context.Context, env []string, extra ...string) (*agentProc, error) {
	a, err := b.startAgentEnv(ctx, env, defaultKeyType, workloadTTL, append([]string{"--log-level", "info"}, extra...)...)
	if err != nil {
		return nil, err
	}
	err = func() error {
		rctx, cancel := context.WithTimeout(a.ctx, stepLimit)
		defer cancel()
		conn, err := dial(rctx, a.socket)
		if err != nil {
			return err
		}
		defer conn.Close()
		set, err := openStreams(rctx, []*grpc.ClientConn{conn}, 1)
		if err != nil {
			return err
		}
		set.close()
		return nil
	}()
	if err != nil {
		a.kill()
		return nil, a.failure(err)
	}
	return a, nil
}

// cpuSeconds returns the process's user plus system CPU time, from
// /proc/PID/stat (fields 14 and 15, in clock ticks of 1/100 s on Linux).
func (p *proc) cpuSeconds() (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid()))
	if err != nil {
		return 0, fmt.Errorf("read %s stat: %w", p.name, err)
	}
	// The command name (field 2) may hold spaces; fields count after it.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("%s stat: unexpected %q", p.name, b)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%s stat: bad utime/stime %q %q", p.name, f[11], f[12])
	}
	return float64(utime+stime) / 100, nil
}

// openFDs counts the process's open file descriptors.
func (p *proc) openFDs() (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid()))
	if err != nil {
		return 0, fmt.Errorf("list %s fds: %w", p.name, err)
	}
	return len(ents), nil
}

// inotifyWatches counts the inotify watches the process holds, from the
// "inotify wd:" lines of /proc/PID/fdinfo.
func (p *proc) inotifyWatches() (int, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", p.pid())
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("list %s fdinfo: %w", p.name, err)
	}
	n := 0
	for _, e := range ents {
		b, err := os.ReadFile(dir + "/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		n += strings.Count(string(b), "inotify wd:")
	}
	return n, nil
}

// debugGet reads path from the agent's debug endpoint, at most 4 MiB, and
// returns the status code with the body. The connection is closed after
// the answer: an idle keep-alive connection would hold a goroutine in the
// agent, which the churn figure counts.
func (a *agentProc) debugGet(ctx context.Context, path string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, stepLimit)
	defer cancel()
	url := "http://" + a.httpAddr + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("get %s: %w", url, err)
	}
	return resp.StatusCode, body, nil
}

// metrics reads the named gauges from the agent's /metrics.
func (a *agentProc) metrics(ctx context.Context, names ...string) (map[string]float64, error) {
	code, body, err := a.debugGet(ctx, "/metrics")
	if err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("read metrics: status %d", code)
	}
	out := map[string]float64{}
	for line := range strings.SplitSeq(string(body), "\n") {
		name, v, ok := strings.Cut(line, " ")
		if !ok || !slices.Contains(names, name) {
			continue
		}
		if out[name], err = strconv.ParseFloat(strings.TrimSpace(v), 64); err != nil {
			return nil, fmt.Errorf("metrics: %s %q: %w", name, v, err)
		}
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("metrics: no %s", n)
		}
	}
	return out, nil
}

// fetch calls FetchSecrets as Envoy would, with the node and Secret type.
func fetch(ctx context.Context, conn grpc.ClientConnInterface, names []string) (*discoveryv3.DiscoveryResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, stepLimit)
	defer cancel()
	return secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{
		Node: sdstest.DefaultNode(), TypeUrl: resource.SecretType, ResourceNames: names,
	}, grpc.MaxCallSendMsgSize(64<<20))
}

// codeCounts counts gRPC status codes, printed as code:count pairs.
type codeCounts map[codes.Code]int

func (c codeCounts) add(err error) { c[status.Code(err)]++ }

func (c codeCounts) String() string {
	var parts []string
	for code, n := range c {
		parts = append(parts, fmt.Sprintf("%s:%d", code, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// kb formats bytes as kB with one decimal.
func kb(n float64) string { return fmt.Sprintf("%.1fkB", n/1024) }

// logFlood runs, at info and at debug level, three hostile clients one
// after the other against one agent each, and prints per client the
// agent's log output per second and log bytes and CPU time per 1,000
// requests: 1,000 unknown names per fetch; one 1 MiB name per fetch; and
// 1,000 names of 1 KiB per fetch.
func (b *bencher) logFlood(ctx context.Context) error {
	s := b.sizes()
	unknown := make([]string, s.floodNames)
	for i := range unknown {
		unknown[i] = fmt.Sprintf("unknown-resource-%04d", i)
	}
	oneLong := []string{strings.Repeat("n", 1<<20)}
	manyLong := make([]string, 1000)
	for i := range manyLong {
		manyLong[i] = fmt.Sprintf("%04d-%s", i, strings.Repeat("l", 1019))
	}
	clients := []struct {
		name  string
		names []string
		d     time.Duration
	}{
		{fmt.Sprintf("unknown_names names_per_request=%d", len(unknown)), unknown, s.floodFor},
		{"one_long_name name_bytes=1048576", oneLong, s.longFor},
		{"long_names names_per_request=1000 name_bytes=1024", manyLong, s.longFor},
	}
	for _, level := range []string{"info", "debug"} {
		a, err := b.startServing(ctx, "--log-level", level)
		if err != nil {
			return err
		}
		err = func() error {
			conn, err := dial(a.ctx, a.socket)
			if err != nil {
				return err
			}
			defer conn.Close()
			for _, c := range clients {
				if err := b.floodOnce(a, conn, level, c.name, c.names, c.d); err != nil {
					return err
				}
			}
			return nil
		}()
		if err != nil {
			a.kill()
			return a.failure(err)
		}
		if err := a.stop(stopLimit); err != nil {
			return err
		}
	}
	return nil
}

// floodOnce fetches names in a loop for d and prints what it cost the agent.
func (b *bencher) floodOnce(a *agentProc, conn *grpc.ClientConn, level, client string, names []string, d time.Duration) error {
	cpu0, err := a.cpuSeconds()
	if err != nil {
		return err
	}
	logs0 := a.logBytes.Load()
	start := time.Now()
	got := codeCounts{}
	requests := 0
	for time.Since(start) < d {
		_, err := fetch(a.ctx, conn, names)
		if status.Code(err) == codes.DeadlineExceeded || a.ctx.Err() != nil {
			return fmt.Errorf("fetch %d of %s: %w", requests+1, client, err)
		}
		got.add(err)
		requests++
	}
	elapsed := time.Since(start)
	cpu1, err := a.cpuSeconds()
	if err != nil {
		return err
	}
	logBytes := float64(a.logBytes.Load() - logs0)
	perSec := logBytes / elapsed.Seconds()
	per1000 := 1000 / float64(requests)
	fmt.Fprintf(b.out, "log_flood level=%s client=%s duration=%s requests=%d codes=%s log_bytes=%.0f log_per_s=%s log_per_1000_req=%s cpu_s=%.2f cpu_s_per_1000_req=%.2f  [target <=64kB/s: %s]\n",
		level, client, elapsed.Round(time.Millisecond), requests, got, logBytes, kb(perSec), kb(logBytes*per1000),
		cpu1-cpu0, (cpu1-cpu0)*per1000, verdict(perSec <= targetLogBytesPerSec))
	return nil
}
