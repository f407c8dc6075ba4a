package sds

import (
	"bytes"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// serverGoroutines counts the goroutines running code of this package's
// non-test files (the harness's own goroutines and sdstest's do not).
func serverGoroutines(t *testing.T) int {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	dir := filepath.Dir(self) + "/"
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for g := range bytes.SplitSeq(buf, []byte("\n\n")) {
		for line := range strings.SplitSeq(string(g), "\n") {
			file, ok := strings.CutPrefix(strings.TrimSpace(line), dir)
			if !ok {
				continue
			}
			file, _, _ = strings.Cut(file, ":")
			if !strings.Contains(file, "/") && !strings.HasSuffix(file, "_test.go") {
				count++
				break
			}
		}
	}
	return count
}

// TestIdleStreamHoldsOneGoroutine: a stream waiting for its next request
// holds one goroutine, gRPC's handler, and no receive goroutine of its
// own. Go never frees a goroutine's descriptor, so what a churn of
// streams leaves behind grows with goroutines per stream.
func TestIdleStreamHoldsOneGoroutine(t *testing.T) {
	h := newHarness(t)
	h.publishAll()
	ctx := h.ctx()
	base := serverGoroutines(t)
	const streams = 20
	var open []*sdstest.Stream
	for range streams {
		st := h.openStream()
		open = append(open, st)
		if err := st.Request(def); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(ctx); err != nil {
			t.Fatal(err)
		}
		if err := st.ACK(); err != nil {
			t.Fatal(err)
		}
	}
	h.waitStreams("every stream acked", func(s []StreamInfo) bool {
		if len(s) != streams {
			return false
		}
		for _, st := range s {
			if st.AckedVersion == "" {
				return false
			}
		}
		return true
	})
	if got := serverGoroutines(t) - base; got != streams {
		t.Fatalf("%d idle streams run %d goroutines in package sds, want one each", streams, got)
	}
	// They still get pushes while they wait: a rotation reaches each.
	leaf := h.publishLeaf(spiffeA)
	for i, st := range open {
		resp, err := st.Recv(ctx)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if !bytes.Equal(resp.Secret(def).GetTlsCertificate().GetCertificateChain().GetInlineBytes(), leaf.ChainPEM) {
			t.Fatalf("stream %d got another chain than the rotated one", i)
		}
	}
}
