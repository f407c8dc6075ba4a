package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
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
