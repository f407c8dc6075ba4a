package sds

import (
	"slices"
	"time"

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
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	for {
		updated := h.srv.table.watch()
		v := h.srv.Versions()
		if cond(v) {
			return
		}
		select {
		case <-updated:
		case <-deadline.C:
			h.t.Fatalf("waiting for %s: versions %v", what, v)
		}
	}
}
