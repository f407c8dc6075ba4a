package sds

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// "Nothing was sent" is checked against a marker: a response the server
// must send after the one that must not come. A stream handles its
// requests in order and, after each, sends what is due at that moment,
// reading the table as it is then. So anything due before a marker
// request (because of an earlier request, or of a table update applied
// before it) arrives before the marker's answer or inside it; either way
// the answer is not the marker alone.

// markSotW checks that st was sent nothing since its last response. names
// is st's subscription; mark, which must be served, is dropped from it if
// present and then asked for along with names, and the next response must
// carry mark alone. st's subscription is names plus mark afterwards.
func (h *harness) markSotW(st *sdstest.Stream, mark string, names ...string) *sdstest.Response {
	h.t.Helper()
	without := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == mark })
	if len(without) < len(names) {
		if err := st.Request(without...); err != nil {
			h.t.Fatal(err)
		}
	}
	if err := st.Request(append(without, mark)...); err != nil {
		h.t.Fatal(err)
	}
	resp := h.recv(st)
	if got := resp.Names(); !slices.Equal(got, []string{mark}) {
		h.t.Fatalf("got %v before the marker %s: want nothing sent before it", got, mark)
	}
	return resp
}

// markDelta checks that st was sent nothing since its last response: it
// subscribes to mark, which must be served (a delta client subscribing to
// a name it holds has forgotten it, so it is sent again), and the next
// response must carry mark alone and remove nothing.
func (h *harness) markDelta(st *sdstest.DeltaStream, mark string) *sdstest.DeltaResponse {
	h.t.Helper()
	if err := st.Subscribe(mark); err != nil {
		h.t.Fatal(err)
	}
	resp := h.recvDelta(st)
	if got := resp.Names(); !slices.Equal(got, []string{mark}) || len(resp.Removed) != 0 {
		h.t.Fatalf("got %v, removed %v before the marker %s: want nothing sent before it", got, resp.Removed, mark)
	}
	return resp
}

// waitPushes waits until at least n responses were sent on api's streams
// and returns how many were. The client may read a response before the
// server counts it; the server wakes stream waiters after counting.
func (h *harness) waitPushes(api string, n float64) float64 {
	h.t.Helper()
	var got float64
	h.waitStreams(fmt.Sprintf("%v %s pushes", n, api), func([]StreamInfo) bool {
		got = testutil.ToFloat64(h.metrics.SDSPushes.WithLabelValues(api))
		return got >= n
	})
	return got
}

// waitVersion waits until the server serves name at a version other than
// before (the store publishes before the sync goroutine applies).
func (h *harness) waitVersion(name, before string) {
	h.t.Helper()
	h.waitTable(name+" at a new version", func(v map[string]string) bool {
		got, ok := v[name]
		return ok && got != before
	})
}

// waitTable waits until cond holds for the server's Versions, waking at
// every table update.
func (h *harness) waitTable(what string, cond func(map[string]string) bool) {
	h.t.Helper()
	waitTable(h.t, h.srv, what, cond)
}

// waitTable waits until cond holds for srv's Versions, waking at every
// table update.
func waitTable(t testing.TB, srv *Server, what string, cond func(map[string]string) bool) {
	t.Helper()
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	for {
		updated := srv.table.watch()
		v := srv.Versions()
		if cond(v) {
			return
		}
		select {
		case <-updated:
		case <-deadline.C:
			t.Fatalf("waiting for %s: versions %v", what, v)
		}
	}
}
