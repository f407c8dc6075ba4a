package main

import (
	"path/filepath"
	"testing"

	"github.com/sdsagent/sdsagent/internal/memtrim"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// TestAgentReleasesHeapAfterConnectionsClose checks that the agent wires
// its heap releaser to the SDS server's load: after 40 connections with
// a stream each (a load of 80) close, it returns its free heap to the OS
// without waiting for Go's forced GC. (The release runs 5 s after the
// fall, on the real clock: the decision logic is tested in memtrim with a
// fake one.) It also checks that the startup release, wired to the
// first certificate, ran.
func TestAgentReleasesHeapAfterConnectionsClose(t *testing.T) {
	ca := startCA(t, "127.0.0.1:0")
	a := startAgent(t, ca.agentArgs(filepath.Join(tempDir(t), "s.sock"), "--log-level", "debug"))
	const conns = 40
	var open []func()
	for range conns {
		conn := dial(t, a.socket)
		st := openStream(t, conn)
		if err := st.Request(sdstest.CertName, sdstest.RootName); err != nil {
			t.Fatal(err)
		}
		recvIdentity(t, st)
		open = append(open, func() { st.Close(); _ = conn.Close() })
	}
	// Close them once the agent has seen the load they make.
	a.logs.waitLine(t, "heap load peak")
	for _, close := range open {
		close()
	}
	line := a.logs.waitLine(t, "heap released")
	if peak, _ := line["peak"].(float64); peak < memtrim.DefaultMinDrop {
		t.Fatalf("released at a peak load of %v, want at least %d (connections plus streams)", line["peak"], memtrim.DefaultMinDrop)
	}
	// The startup release is wired to the first certificate too: it
	// logs that it released, or why not (an old kernel, not Linux).
	a.logs.waitLine(t, "startup memory")
}
