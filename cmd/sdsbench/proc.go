package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// stopLimit bounds how long a process may take to exit after SIGTERM.
	stopLimit = 10 * time.Second
	// killWait bounds how long kill waits for the process to be reaped.
	killWait = 5 * time.Second
	// logTailLines is how many of a process's last log lines a failure shows.
	logTailLines = 40
)

// proc is a child process in its own process group whose stderr (its
// logs) is kept for error messages.
type proc struct {
	name string
	cmd  *exec.Cmd
	logs *tail
	// ctx is done once the process has exited (or the parent is done).
	ctx    context.Context
	exited chan struct{}
	// logBytes counts every byte the process wrote to stdout and stderr.
	logBytes atomic.Int64
}

// startProc starts bin with args in a new process group and returns it
// with the time taken just before cmd.Start. onLine, if not nil, sees
// every stderr line (from another goroutine).
func startProc(parent context.Context, name, bin string, onLine func([]byte), args ...string) (*proc, time.Time, error) {
	return startProcEnv(parent, name, bin, nil, onLine, args...)
}

// startProcEnv is startProc with env (KEY=value) added to this
// process's environment.
func startProcEnv(parent context.Context, name, bin string, env []string, onLine func([]byte), args ...string) (*proc, time.Time, error) {
	cmd := exec.Command(bin, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	// Own process group, so that kill reaches anything it starts; and
	// killed by the kernel if this process dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("start %s: %w", name, err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	ctx, cancel := context.WithCancel(parent)
	p := &proc{name: name, cmd: cmd, logs: newTail(logTailLines), ctx: ctx, exited: make(chan struct{})}

	started := time.Now()
	err = cmd.Start()
	_ = w.Close()
	if err != nil {
		cancel()
		_ = r.Close()
		return nil, time.Time{}, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		defer r.Close()
		cr := &countingReader{r: r, n: &p.logBytes}
		sc := bufio.NewScanner(cr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.logs.add(sc.Text())
			if onLine != nil {
				onLine(sc.Bytes())
			}
		}
		// A line longer than the buffer ends Scan: keep draining, so that
		// the process never blocks on a full pipe.
		_, _ = io.Copy(io.Discard, cr)
	}()
	go func() {
		_ = cmd.Wait()
		close(p.exited)
		cancel()
	}()
	return p, started, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to limit for a clean exit (code 0). On
// timeout it kills the process group.
func (p *proc) stop(limit time.Duration) error {
	if p.hasExited() {
		return p.exitError("exited before it was stopped")
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.kill()
		return fmt.Errorf("%s: sigterm: %w", p.name, err)
	}
	select {
	case <-p.exited:
	case <-time.After(limit):
		p.kill()
		return fmt.Errorf("%s did not exit within %s of SIGTERM; last logs:\n%s", p.name, limit, p.logs)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		return p.exitError("exited after SIGTERM")
	}
	return nil
}

// exitError describes how the process ended, with its last logs.
func (p *proc) exitError(what string) error {
	return fmt.Errorf("%s %s with %s; last logs:\n%s", p.name, what, p.cmd.ProcessState, p.logs)
}

// failure wraps err with the process's last logs, or says that the
// process died if it did.
func (p *proc) failure(err error) error {
	if p.hasExited() {
		return fmt.Errorf("%w (%s died: %s); last logs:\n%s", err, p.name, p.cmd.ProcessState, p.logs)
	}
	return fmt.Errorf("%w; %s's last logs:\n%s", err, p.name, p.logs)
}

// kill kills the process group unless the process has already exited and
// been reaped (its group id could then belong to someone else), and waits
// for it. It is idempotent.
func (p *proc) kill() {
	if p.hasExited() {
		return
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(killWait):
	}
}

// memory is a process's memory use in kB, from /proc/PID/status.
type memory struct {
	rss, hwm   int64 // VmRSS, VmHWM
	anon, file int64 // RssAnon, RssFile: heap and stacks vs. mapped binary
}

// status reads the process's memory use.
func (p *proc) status() (memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid()))
	if err != nil {
		return memory{}, fmt.Errorf("read %s status: %w", p.name, err)
	}
	var m memory
	fields := map[string]*int64{"VmRSS:": &m.rss, "VmHWM:": &m.hwm, "RssAnon:": &m.anon, "RssFile:": &m.file}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && fields[f[0]] != nil {
			if _, err := fmt.Sscanf(f[1], "%d", fields[f[0]]); err != nil {
				return memory{}, fmt.Errorf("%s status: %q: %w", p.name, line, err)
			}
		}
	}
	if m.rss == 0 || m.hwm == 0 {
		return memory{}, fmt.Errorf("%s status has no VmRSS/VmHWM:\n%s", p.name, b)
	}
	return m, nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// tail keeps the last lines written.
type tail struct {
	mu    sync.Mutex
	max   int
	lines []string
}

func newTail(n int) *tail { return &tail{max: n} }

func (t *tail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == t.max {
		t.lines = append(t.lines[:0], t.lines[1:]...)
	}
	t.lines = append(t.lines, line)
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return "  (no output)"
	}
	return "  " + strings.Join(t.lines, "\n  ")
}

// devCA is the running `sdsagent ca`.
type devCA struct {
	*proc
	addr string
	dir  string
}

// startCA starts `sdsagent ca` on a random loopback port with its state in
// tmp/ca and waits for its "listening" log line. The CA runs from a copy
// of the binary: in production the CA is another program on another host,
// and two processes mapping one file share its pages, which would count
// in the agent's resident set and keep the kernel from reclaiming them.
func startCA(ctx context.Context, bin, tmp string) (*devCA, error) {
	dir := filepath.Join(tmp, "ca")
	caBin := filepath.Join(tmp, "sdsagent-ca")
	if err := copyFile(bin, caBin); err != nil {
		return nil, fmt.Errorf("start ca: %w", err)
	}
	ca, err := launchCA(ctx, caBin, dir, "127.0.0.1:0", "sdsagent ca")
	if err != nil {
		return nil, fmt.Errorf("start ca: %w", err)
	}
	return ca, nil
}

// launchCA starts `sdsagent ca` from bin, named name in errors, with its
// state in dir, listening on listen, and returns it once it logs that it
// listens.
func launchCA(ctx context.Context, bin, dir, listen, name string) (*devCA, error) {
	addrs := make(chan string, 1)
	onLine := func(line []byte) {
		var l struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal(line, &l) == nil && l.Msg == "development CA listening" && l.Addr != "" {
			select {
			case addrs <- l.Addr:
			default:
			}
		}
	}
	p, _, err := startProc(ctx, name, bin, onLine,
		"ca", "--dir", dir, "--listen", listen, "--log-format", "json")
	if err != nil {
		return nil, err
	}
	timer := time.NewTimer(stepLimit)
	defer timer.Stop()
	select {
	case addr := <-addrs:
		return &devCA{proc: p, addr: addr, dir: dir}, nil
	case <-p.ctx.Done():
		p.kill()
		return nil, p.failure(errors.New("no \"development CA listening\" line"))
	case <-timer.C:
		p.kill()
		return nil, p.failure(fmt.Errorf("no \"development CA listening\" line within %s", stepLimit))
	}
}

// copyFile copies an executable.
func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o755)
}

// agentArgs returns the arguments of `sdsagent run` against ca.
func (ca *devCA) agentArgs(socket, httpAddr, keyType string, ttl time.Duration) []string {
	return []string{"run",
		"--ca-addr", ca.addr,
		"--ca-root-cert", filepath.Join(ca.dir, "root-cert.pem"),
		"--token-file", filepath.Join(ca.dir, "token"),
		"--socket", socket,
		"--http-addr", httpAddr,
		"--secret-ttl", ttl.String(),
		"--key-type", keyType,
		"--log-format", "json",
	}
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr() (string, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr, nil
}
