// Command coldphases times the start of `sdsagent run` from exec to its
// first SDS response, step by step, for the README's cold-start
// breakdown. It starts `sdsagent ca`, then each agent given, in turn,
// runs times, at --log-level debug, and dates each of the agent's log
// lines by its arrival on the pipe (the same clock as the exec and the
// client's events). It prints, per agent, the median time from exec of
// the first line with each message, of the SDS connection and of the
// first valid "default" response.
//
//	go run ./hack/coldphases -agents bin/sdsagent[,bin/other] [-runs 40]
//
// Logging at debug level costs time too: the total is a little above
// sdsbench's cold_start, which logs at info.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

const (
	connected = "(client) sds connection accepted"
	responded = "(client) first default response"
)

func main() {
	agents := flag.String("agents", "bin/sdsagent", "comma-separated agent binaries, run in turn")
	caBin := flag.String("ca", "", "binary that runs `ca` (default: the first agent)")
	runs := flag.Int("runs", 40, "runs per agent")
	flag.Parse()
	if err := run(strings.Split(*agents, ","), *caBin, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "coldphases:", err)
		os.Exit(1)
	}
}

func run(agents []string, caBin string, runs int) error {
	if caBin == "" {
		caBin = agents[0]
	}
	tmp, err := os.MkdirTemp("", "cph")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dir := filepath.Join(tmp, "ca")
	addr, stop, err := startCA(caBin, dir)
	if err != nil {
		return err
	}
	defer stop()
	times := make([]map[string][]time.Duration, len(agents))
	var order []string
	for i := range runs * len(agents) {
		k := i % len(agents)
		if times[k] == nil {
			times[k] = map[string][]time.Duration{}
		}
		seen, err := once(agents[k], addr, dir, filepath.Join(tmp, fmt.Sprintf("a%d.sock", i)))
		if err != nil {
			return fmt.Errorf("%s run %d: %w", agents[k], i/len(agents)+1, err)
		}
		for msg, d := range seen {
			if !slices.Contains(order, msg) {
				order = append(order, msg)
			}
			times[k][msg] = append(times[k][msg], d)
		}
	}
	for k, agent := range agents {
		fmt.Printf("%s: median ms from exec over %d runs\n", agent, runs)
		med := map[string]time.Duration{}
		for msg, ds := range times[k] {
			slices.Sort(ds)
			med[msg] = ds[len(ds)/2]
		}
		names := slices.Clone(order)
		slices.SortFunc(names, func(a, b string) int { return int(med[a] - med[b]) })
		for _, msg := range names {
			if n := len(times[k][msg]); n > 0 {
				fmt.Printf("  %7.2f  %s (n=%d)\n", float64(med[msg])/1e6, msg, n)
			}
		}
	}
	return nil
}

// startCA runs `ca` in dir and returns its address.
func startCA(bin, dir string) (string, func(), error) {
	cmd := exec.Command(bin, "ca", "--dir", dir, "--listen", "127.0.0.1:0", "--log-format", "json")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StderrPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var l struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "development CA listening" {
			go func() {
				for sc.Scan() { // keep draining
				}
			}()
			return l.Addr, stop, nil
		}
	}
	stop()
	return "", nil, errors.New("the CA printed no \"development CA listening\" line")
}

// once runs the agent until its first response and returns when each
// log message first arrived, and the client's events, from exec.
func once(bin, caAddr, caDir, socket string) (map[string]time.Duration, error) {
	cmd := exec.Command(bin, "run", "--ca-addr", caAddr,
		"--ca-root-cert", filepath.Join(caDir, "root-cert.pem"), "--token-file", filepath.Join(caDir, "token"),
		"--socket", socket, "--http-addr", "127.0.0.1:0", "--secret-ttl", "1h",
		"--log-format", "json", "--log-level", "debug")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = w, w
	type arrival struct {
		msg string
		at  time.Time
	}
	lines := make(chan arrival, 256)
	start := time.Now()
	err = cmd.Start()
	_ = w.Close()
	if err != nil {
		_ = r.Close()
		return nil, err
	}
	go func() {
		defer close(lines)
		defer r.Close()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			at := time.Now()
			var l struct{ Msg string }
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg != "" {
				lines <- arrival{l.Msg, at}
			}
		}
	}()
	seen := map[string]time.Duration{}
	err = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var conn time.Time
		dialer := func(ctx context.Context, _ string) (net.Conn, error) {
			for {
				c, err := (&net.Dialer{}).DialContext(ctx, "unix", socket)
				if err == nil {
					conn = time.Now()
					return c, nil
				}
				t := time.NewTimer(time.Millisecond) // as sdsbench polls
				select {
				case <-ctx.Done():
					t.Stop()
					return nil, ctx.Err()
				case <-t.C:
				}
			}
		}
		cc, err := sdstest.Dial(ctx, socket, grpc.WithContextDialer(dialer))
		if err != nil {
			return err
		}
		defer cc.Close()
		st, err := sdstest.OpenStream(ctx, cc)
		if err != nil {
			return err
		}
		defer st.Close()
		if err := st.Request(sdstest.CertName); err != nil {
			return err
		}
		for {
			resp, err := st.Recv(ctx)
			if err != nil {
				return err
			}
			if resp.Secret(sdstest.CertName) != nil {
				break
			}
		}
		seen[responded] = time.Since(start)
		seen[connected] = conn.Sub(start)
		return nil
	}()
	stopped := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	for l := range lines {
		if _, ok := seen[l.msg]; !ok && l.at.Before(stopped) {
			seen[l.msg] = l.at.Sub(start)
		}
	}
	return seen, err
}
