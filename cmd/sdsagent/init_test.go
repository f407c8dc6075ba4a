package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestOurPackagesDoNoInitWork: none of the agent's own packages allocates
// in package initialisation (a compiled regular expression, a map
// literal): that work runs at every start of every agent, before main,
// whatever the subcommand (issue 13). GODEBUG=inittrace=1 lists every
// package whose initialisation does work, with its allocations.
func TestOurPackagesDoNoInitWork(t *testing.T) {
	cmd := exec.Command(binPath, "version")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("sdsagent version: %v\n%s", err, stderr.Bytes())
	}
	const ours = "github.com/sdsagent/sdsagent/"
	lines := 0
	sc := bufio.NewScanner(&stderr)
	for sc.Scan() {
		// init PKG @0.5 ms, 0.012 ms clock, 2648 bytes, 37 allocs
		f := strings.Fields(sc.Text())
		if len(f) < 11 || f[0] != "init" {
			continue
		}
		lines++
		if !strings.HasPrefix(f[1], ours) {
			continue
		}
		bytesN, err1 := strconv.Atoi(f[7])
		allocs, err2 := strconv.Atoi(f[9])
		if err1 != nil || err2 != nil {
			t.Fatalf("cannot read inittrace line %q", sc.Text())
		}
		if bytesN > 0 || allocs > 0 {
			t.Errorf("package %s allocates %d bytes in %d allocations at init: build it when first used instead", f[1], bytesN, allocs)
		}
	}
	if lines == 0 {
		t.Fatalf("no inittrace line; stderr:\n%s", stderr.Bytes())
	}
}

// TestAgentBuildDropsGRPCTracing: `make build` builds the agent with
// grpc-go's grpcnotrace tag, and with it the agent links neither
// golang.org/x/net/trace nor the templates it imports. html/template's
// reflection keeps every exported method of every linked type in the
// binary (3 MB of the agent's 19.7 MB), all mapped at start.
func TestAgentBuildDropsGRPCTracing(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	var recipe string
	for _, line := range strings.Split(string(mk), "\n") {
		if strings.Contains(line, "-o $(BIN) ./cmd/sdsagent") {
			recipe = line
		}
	}
	if !strings.Contains(recipe, "-tags grpcnotrace") {
		t.Errorf("the Makefile builds the agent without -tags grpcnotrace: %q", recipe)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(goTool, "list", "-tags", "grpcnotrace", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "google.golang.org/grpc") {
		t.Fatalf("go list -deps does not list grpc; output:\n%s", out)
	}
	for _, banned := range []string{"golang.org/x/net/trace", "html/template", "text/template"} {
		if slices.Contains(deps, banned) {
			t.Errorf("cmd/sdsagent built with grpcnotrace links %s", banned)
		}
	}
}
