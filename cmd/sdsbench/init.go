package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	// initRuns is how many times init_time runs each binary, per pass.
	initRuns = 30
	// targetInitRatio is issue 13's target for the agent's package
	// initialisation against the floor server's.
	targetInitRatio = 1.15
)

// helloSource is a Go hello-world: the least a Go binary spends before
// main, as a reference.
const helloSource = `package main

import "fmt"

func main() { fmt.Println("hello") }
`

// initBinary is one binary whose start init_time measures.
type initBinary struct {
	name string
	path string
	args []string
}

// initSample is one binary's medians.
type initSample struct {
	init, wall, cpu time.Duration // inittrace sum; exec to exit; user+sys
	size            int64         // bytes
}

// initTime measures how long each binary spends before main: the sum of
// GODEBUG=inittrace=1's per-package clock times, and the wall time and
// CPU time (user+sys) of exec to exit of a run that does nothing else
// (`sdsagent version`, a hello-world, and the floor server when floor is
// not nil, run without flags so that it stops at its usage error). The
// binaries run interleaved, initRuns times each, the wall and CPU times in
// a second pass without inittrace, whose printing costs time too.
func (b *bencher) initTime(ctx context.Context, floor func(context.Context) (string, error)) error {
	hello, err := buildHello(ctx, b.tmp)
	if err != nil {
		return err
	}
	bins := []initBinary{{name: "agent", path: b.p.agent, args: []string{"version"}}}
	if floor != nil {
		path, err := floor(ctx)
		if err != nil {
			return err
		}
		bins = append(bins, initBinary{name: "floor", path: path})
	}
	bins = append(bins, initBinary{name: "hello", path: hello})

	runs := initRuns
	if b.p.quick {
		runs = 5
	}
	inits := make([][]time.Duration, len(bins))
	walls := make([][]time.Duration, len(bins))
	cpus := make([][]time.Duration, len(bins))
	for range runs {
		for i, bin := range bins {
			d, err := inittraceSum(ctx, bin)
			if err != nil {
				return err
			}
			inits[i] = append(inits[i], d)
		}
	}
	for range runs {
		for i, bin := range bins {
			wall, cpu, err := execTimes(ctx, bin)
			if err != nil {
				return err
			}
			walls[i] = append(walls[i], wall)
			cpus[i] = append(cpus[i], cpu)
		}
	}
	samples := make(map[string]initSample, len(bins))
	for i, bin := range bins {
		fi, err := os.Stat(bin.path)
		if err != nil {
			return err
		}
		samples[bin.name] = initSample{
			init: summarize(inits[i]).median, wall: summarize(walls[i]).median,
			cpu: summarize(cpus[i]).median, size: fi.Size(),
		}
	}
	for _, line := range initLines(runs, bins, samples) {
		fmt.Fprintln(b.out, line)
	}
	return nil
}

// initLines formats init_time and binary_size from the medians.
func initLines(runs int, bins []initBinary, s map[string]initSample) []string {
	var initParts, sizeParts []string
	for _, bin := range bins {
		x := s[bin.name]
		initParts = append(initParts, fmt.Sprintf("%s: init=%s wall=%s cpu=%s", bin.name, ms(x.init), ms(x.wall), ms(x.cpu)))
		sizeParts = append(sizeParts, fmt.Sprintf("%s=%.1fMB", bin.name, float64(x.size)/(1<<20)))
	}
	line := fmt.Sprintf("init_time  runs=%d median  %s", runs, strings.Join(initParts, "  "))
	agent := s["agent"]
	for _, ref := range []string{"floor", "hello"} {
		r, ok := s[ref]
		if !ok {
			continue
		}
		line += fmt.Sprintf("  agent/%s: init=%s wall=%s cpu=%s", ref, ratio(agent.init, r.init), ratio(agent.wall, r.wall), ratio(agent.cpu, r.cpu))
	}
	if f, ok := s["floor"]; ok && f.init > 0 {
		line += fmt.Sprintf("  [target init<=%.2fx floor: %s]", targetInitRatio, verdict(float64(agent.init) <= targetInitRatio*float64(f.init)))
	} else {
		line += "  [no floor server in this run: target not judged]"
	}
	size := "binary_size  " + strings.Join(sizeParts, " ")
	if f, ok := s["floor"]; ok {
		size += "  agent/floor=" + ratio(time.Duration(agent.size), time.Duration(f.size))
	}
	return []string{line, size}
}

// ratio formats a/b with two decimals.
func ratio(a, b time.Duration) string {
	if b <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", float64(a)/float64(b))
}

// buildHello builds helloSource into dir and returns the binary's path.
func buildHello(ctx context.Context, dir string) (string, error) {
	src := filepath.Join(dir, "hello")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", fmt.Errorf("hello-world: %w", err)
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(helloSource), 0o644); err != nil {
		return "", fmt.Errorf("hello-world: %w", err)
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module hello\n"), 0o644); err != nil {
		return "", fmt.Errorf("hello-world: %w", err)
	}
	bin := filepath.Join(dir, "hello-world")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build a hello-world with `go build` (needs the go tool in PATH): %w\n%s", err, out)
	}
	return bin, nil
}

// inittraceSum runs bin with GODEBUG=inittrace=1 and returns the sum of
// the clock times of its packages' initialisation.
func inittraceSum(ctx context.Context, bin initBinary) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, bin.path, bin.args...)
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	_ = cmd.Run() // the floor exits 1 at its usage error; only init counts
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	d, n, err := parseInittrace(stderr.Bytes())
	if err != nil {
		return 0, fmt.Errorf("%s: %w", bin.name, err)
	}
	if n == 0 {
		return 0, fmt.Errorf("%s printed no inittrace line; stderr:\n%s", bin.name, stderr.Bytes())
	}
	return d, nil
}

// parseInittrace sums the "N ms clock" of every "init PKG @..." line and
// counts the lines.
func parseInittrace(out []byte) (time.Duration, int, error) {
	var (
		sum float64
		n   int
	)
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// init PKG @0.5 ms, 0.012 ms clock, 0 bytes, 0 allocs
		if len(f) < 7 || f[0] != "init" || f[6] != "clock," {
			continue
		}
		v, err := strconv.ParseFloat(f[4], 64)
		if err != nil {
			return 0, 0, fmt.Errorf("inittrace line %q: %w", sc.Text(), err)
		}
		sum += v
		n++
	}
	return time.Duration(sum * float64(time.Millisecond)), n, sc.Err()
}

// execTimes runs bin and returns the wall time from just before exec to
// its exit, and its CPU time (user and system).
func execTimes(ctx context.Context, bin initBinary) (wall, cpu time.Duration, err error) {
	cmd := exec.CommandContext(ctx, bin.path, bin.args...)
	start := time.Now()
	_ = cmd.Run() // the floor exits 1 at its usage error
	wall = time.Since(start)
	if ctx.Err() != nil {
		return 0, 0, ctx.Err()
	}
	if cmd.ProcessState == nil {
		return 0, 0, fmt.Errorf("%s: did not run", bin.name)
	}
	return wall, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}
