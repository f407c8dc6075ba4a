package sds

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/ratelog"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// suppressed sums the "suppressed" counts of summary lines for msg.
func (h *harness) suppressed(msg string) int64 {
	var n int64
	for _, e := range h.logs.FilterMessage(ratelog.SuppressedMessage).All() {
		if e.ContextMap()["message"] == msg {
			n += e.ContextMap()["suppressed"].(int64)
		}
	}
	return n
}

// TestFetchFloodCannotInflateLogs: one client fetching unknown names in
// a loop used to write one warning per name per call. Now the lines stop
// at the overall limit, a summary says how many were suppressed, and the
// metric still counts every name.
func TestFetchFloodCannotInflateLogs(t *testing.T) {
	clk := clocktest.New(time.Now())
	h := newHarnessWith(t, harnessOptions{clock: clk, infoLogs: true})
	h.publishAll()
	const calls, perCall = 100, DefaultMaxNamesPerRequest
	for i := range calls {
		names := make([]string, perCall)
		for j := range names {
			names[j] = fmt.Sprintf("unknown-%d-%d-%s", i, j, strings.Repeat("n", 300))
		}
		if _, err := sdstest.Fetch(h.ctx(), h.conn, names); status.Code(err) != codes.NotFound {
			t.Fatalf("Fetch = %v, want NotFound", err)
		}
	}
	if got := testutil.ToFloat64(h.metrics.SDSUnknownNames); got != calls*perCall {
		t.Fatalf("unknown names metric = %v, want %d", got, calls*perCall)
	}
	logged := h.logs.FilterMessage(msgUnknownName).Len()
	if logged == 0 || logged > logBurst {
		t.Fatalf("logged %d unknown-name lines in one window, want 1..%d", logged, logBurst)
	}
	if n := len(h.logText.Bytes()); n > 64<<10 {
		t.Fatalf("%d calls wrote %d bytes of logs, want under 64 KiB", calls, n)
	}
	for _, e := range h.logs.FilterMessage(msgUnknownName).All() {
		if r := e.ContextMap()["resource"].(string); len(r) > ratelog.MaxLen+64 {
			t.Fatalf("logged a resource name of %d bytes", len(r))
		}
	}

	// The next window: the summary reports every suppressed line.
	clk.Advance(logWindow)
	if _, err := sdstest.Fetch(h.ctx(), h.conn, []string{"bogus"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Fetch = %v, want NotFound", err)
	}
	logged = h.logs.FilterMessage(msgUnknownName).Len()
	if got := int64(logged) + h.suppressed(msgUnknownName); got != calls*perCall+1 {
		t.Fatalf("logged %d + suppressed %d = %d, want %d", logged, h.suppressed(msgUnknownName), got, calls*perCall+1)
	}
}

// TestStreamFloodCannotInflateLogs: one stream asking for new unknown
// names on every request gets its own, smaller budget of lines, so it
// cannot use up the overall one.
func TestStreamFloodCannotInflateLogs(t *testing.T) {
	clk := clocktest.New(time.Now())
	h := newHarnessWith(t, harnessOptions{clock: clk, infoLogs: true})
	h.publishAll()
	st := h.openStream()
	const requests = 50
	for i := range requests {
		// Different names every time.
		names := make([]string, DefaultMaxNamesPerRequest)
		for j := range names {
			names[j] = fmt.Sprintf("r%d-%d", i, j)
		}
		if err := st.Request(names...); err != nil {
			t.Fatal(err)
		}
	}
	want := float64(requests * DefaultMaxNamesPerRequest)
	// A stream counts and logs a request's names before waking waiters.
	h.waitStreams(fmt.Sprintf("%v unknown names counted", want), func([]StreamInfo) bool {
		return testutil.ToFloat64(h.metrics.SDSUnknownNames) == want
	})
	if n := h.logs.FilterMessage(msgUnknownName).Len(); n != streamLogBurst {
		t.Fatalf("one stream logged %d unknown-name lines, want its budget of %d", n, streamLogBurst)
	}
	// Another client still gets lines through.
	other := h.openStream()
	if err := other.Request("bogus"); err != nil {
		t.Fatal(err)
	}
	h.waitStreams(fmt.Sprintf("%d unknown-name lines", streamLogBurst+1), func([]StreamInfo) bool {
		return h.logs.FilterMessage(msgUnknownName).Len() == streamLogBurst+1
	})
	// The stream's record of unknown names is bounded too.
	if n := len(h.srv.Streams()[0].UnknownNames); n > DefaultMaxNamesPerRequest {
		t.Fatalf("stream keeps %d unknown names", n)
	}
}

// TestClientStringsAreCutInLogs: names, node IDs and NACK messages a
// client sends are logged cut, at info and at debug, and kept cut.
func TestClientStringsAreCutInLogs(t *testing.T) {
	h := newHarness(t) // debug level
	h.publishAll()
	longID := "node-" + strings.Repeat("i", 100_000)
	longName := "bogus-" + strings.Repeat("n", DefaultMaxNameBytes-10)
	st := h.openStream(sdstest.WithNode(&corev3.Node{Id: longID}))
	if err := st.Request(def, longName); err != nil {
		t.Fatal(err)
	}
	h.recv(st)
	if err := st.NACK(strings.Repeat("e", 100_000)); err != nil {
		t.Fatal(err)
	}
	info := h.oneStream("nack recorded", func(s StreamInfo) bool { return s.Nacks == 1 })
	if len(info.NodeID) > ratelog.MaxLen+64 || len(info.LastNack) > maxNackBytes+64 {
		t.Errorf("stream info keeps node id of %d bytes, nack of %d bytes", len(info.NodeID), len(info.LastNack))
	}
	if n := h.logs.FilterMessage("nack received").Len(); n != 1 {
		t.Fatalf("%d nack lines", n)
	}
	for _, e := range h.logs.All() {
		for k, v := range e.ContextMap() {
			if s, ok := v.(string); ok && len(s) > maxReasonBytes+ratelog.MaxLen+64 {
				t.Errorf("%q: field %s is %d bytes", e.Message, k, len(s))
			}
		}
	}
	if n := len(h.logText.Bytes()); n > 32<<10 {
		t.Errorf("wrote %d bytes of logs for a few requests", n)
	}
}

// TestSuppressedLinesSummarizedWithoutTraffic: when a flood stops, the
// summary of what was suppressed still comes, summaryEvery later.
func TestSuppressedLinesSummarizedWithoutTraffic(t *testing.T) {
	clk := clocktest.New(time.Now())
	h := newHarnessWith(t, harnessOptions{clock: clk, infoLogs: true})
	ctx := h.ctx()
	if clk.Timers() != 0 {
		t.Fatalf("%d timers before anything was suppressed, want none", clk.Timers())
	}
	for range logBurst + 5 {
		if _, err := sdstest.Fetch(ctx, h.conn, []string{"bogus"}); status.Code(err) != codes.NotFound {
			t.Fatalf("Fetch = %v, want NotFound", err)
		}
	}
	if !clk.WaitForTimers(1, waitFor) {
		t.Fatal("no summary timer after lines were suppressed")
	}
	clk.Advance(summaryEvery)
	h.logs.WaitUntil(t, waitFor, "a summary of 5 suppressed", func(*observer.ObservedLogs) bool {
		return h.suppressed(msgUnknownName) == 5
	})
}
