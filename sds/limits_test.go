package sds

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// checkLimitError fails unless err is ResourceExhausted naming flag.
func checkLimitError(t *testing.T, err error, flag string, more ...string) {
	t.Helper()
	msg := status.Convert(err).Message()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(msg, flag) {
		t.Fatalf("error = %v, want ResourceExhausted naming %s", err, flag)
	}
	for _, m := range more {
		if !strings.Contains(msg, m) {
			t.Errorf("error %q does not say %q", msg, m)
		}
	}
}

func (h *harness) rejections(limit string) float64 {
	return testutil.ToFloat64(h.metrics.LimitRejections.WithLabelValues(limit))
}

// waitServed waits until the server serves every name (the store
// publishes before the sync goroutine applies).
func (h *harness) waitServed(names ...string) {
	h.t.Helper()
	h.waitTable(fmt.Sprintf("%v served", names), func(v map[string]string) bool {
		for _, n := range names {
			if _, ok := v[n]; !ok {
				return false
			}
		}
		return true
	})
}

func manyNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("name-%d", i)
	}
	return out
}

func TestNameLimits(t *testing.T) {
	tests := []struct {
		name  string
		names []string
		limit string
		flag  string
		say   []string
	}{
		{name: "names per request", names: manyNames(DefaultMaxNamesPerRequest + 1), limit: limitNames, flag: "--sds-max-names-per-request", say: []string{"101", "100"}},
		{name: "name length", names: []string{def, strings.Repeat("x", DefaultMaxNameBytes+1)}, limit: limitNameBytes, flag: "--sds-max-name-bytes", say: []string{"4097", "4096"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.publishAll()
			ctx := h.ctx()
			st := h.openStream()
			if err := st.Request(tt.names...); err != nil {
				t.Fatal(err)
			}
			_, err := st.Recv(ctx)
			checkLimitError(t, err, tt.flag, tt.say...)

			d := h.openDelta()
			if err := d.Subscribe(tt.names...); err != nil {
				t.Fatal(err)
			}
			_, err = d.Recv(ctx)
			checkLimitError(t, err, tt.flag, tt.say...)

			_, err = sdstest.Fetch(ctx, h.conn, tt.names)
			checkLimitError(t, err, tt.flag, tt.say...)
			if got := h.rejections(tt.limit); got != 3 {
				t.Errorf("rejections{limit=%s} = %v, want 3", tt.limit, got)
			}
		})
	}
	t.Run("delta subscriptions add up", func(t *testing.T) {
		h := newHarness(t)
		d := h.openDelta()
		names := manyNames(DefaultMaxNamesPerRequest)
		if err := d.Subscribe(names[:60]...); err != nil {
			t.Fatal(err)
		}
		h.oneStream("first subscribe", func(s StreamInfo) bool { return len(s.Names) == 60 })
		if err := d.Subscribe(append(names[30:], "one-more")...); err != nil {
			t.Fatal(err)
		}
		// The unknown names are answered as removed; then the error.
		var err error
		for err == nil {
			_, err = d.Recv(h.ctx())
		}
		checkLimitError(t, err, "--sds-max-names-per-request", "101")
	})
}

func TestStreamLimits(t *testing.T) {
	h := newHarnessWith(t, harnessOptions{limits: Limits{MaxStreamsPerConn: 2, MaxStreams: 3}})
	h.publishAll()
	h.waitServed(def, root)
	ctx := h.ctx()
	serve := func(st *sdstest.Stream) {
		t.Helper()
		if err := st.Request(def); err != nil {
			t.Fatal(err)
		}
		h.recv(st)
	}
	serve(h.openStream())
	serve(h.openStream())
	third := h.openStream()
	// The server may end the stream before the request is sent (EOF);
	// Recv returns its status either way.
	_ = third.Request(def)
	_, err := third.Recv(ctx)
	checkLimitError(t, err, "--sds-max-streams-per-connection", "2")
	if got := h.rejections(limitStreamsPerConn); got != 1 {
		t.Errorf("rejections{streams_per_connection} = %v, want 1", got)
	}

	// Another connection may open streams until the total is reached.
	conn2, err := sdstest.Dial(ctx, h.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	st, err := sdstest.OpenStream(ctx, conn2)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	serve(st)
	d, err := sdstest.OpenDeltaStream(ctx, conn2)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_ = d.Subscribe(def) // as above: the stream may already be ended
	_, err = d.Recv(ctx)
	checkLimitError(t, err, "--sds-max-streams", "3")
	if got := h.rejections(limitStreams); got != 1 {
		t.Errorf("rejections{streams} = %v, want 1", got)
	}
	// Fetches still work on a full connection.
	if _, err := sdstest.Fetch(ctx, h.conn, []string{def}); err != nil {
		t.Fatalf("Fetch on a connection at its stream limit: %v", err)
	}
	// A closed stream makes room.
	st.Close()
	h.waitStreams("a stream closed", func(s []StreamInfo) bool { return len(s) == 2 })
	again, err := sdstest.OpenStream(ctx, conn2)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	serve(again)
}

// TestMessageSizeLimit: a request over --sds-max-message-bytes ends its
// stream or fetch with ResourceExhausted naming the flag; one over twice
// the limit is refused by gRPC before it is read, with gRPC's message.
// Each is counted, and the connection keeps serving.
func TestMessageSizeLimit(t *testing.T) {
	h := newHarnessWith(t, harnessOptions{limits: Limits{MaxMessageBytes: 2048}})
	h.publishAll()
	h.waitServed(def, root)
	ctx := h.ctx()
	node := func(padding int) *corev3.Node {
		meta, err := structpb.NewStruct(map[string]any{"padding": strings.Repeat("p", padding)})
		if err != nil {
			t.Fatal(err)
		}
		return &corev3.Node{Id: sdstest.DefaultNodeID, Metadata: meta}
	}
	big, huge := node(3000), node(5000)

	checkOurs := func(what string, err error) {
		t.Helper()
		msg := status.Convert(err).Message()
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(msg, "--sds-max-message-bytes") || !strings.Contains(msg, "2048") {
			t.Fatalf("%s: error = %v, want ResourceExhausted naming --sds-max-message-bytes and its 2048 bytes", what, err)
		}
	}
	st := h.openStream()
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: big, ResourceNames: []string{def}, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	_, err := st.Recv(ctx)
	checkOurs("sotw stream", err)
	delta := h.openDelta()
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: big, ResourceNamesSubscribe: []string{def}, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	_, err = delta.Recv(ctx)
	checkOurs("delta stream", err)
	_, err = sdstest.Fetch(ctx, h.conn, []string{def}, sdstest.WithNode(big))
	checkOurs("fetch", err)

	// Over twice the limit, gRPC refuses the message before reading it,
	// and writes its own status first: ResourceExhausted with the bytes.
	_, err = sdstest.Fetch(ctx, h.conn, []string{def}, sdstest.WithNode(huge))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "4096") {
		t.Fatalf("fetch over twice the limit: error = %v, want ResourceExhausted naming 4096 bytes", err)
	}
	// A fetch is counted before its status is written; a stream may end
	// for the client first, but is counted before the server closes it.
	h.waitStreams("refused streams closed", func(s []StreamInfo) bool { return len(s) == 0 })
	if got := h.rejections(limitMessageBytes); got != 4 {
		t.Fatalf("rejections{message_bytes} = %v, want 4", got)
	}
	for _, l := range h.logs.FilterMessage("request refused by a limit").All() {
		if !strings.Contains(l.ContextMap()["error"].(string), "--sds-max-message-bytes") {
			t.Fatalf("limit log line %v does not name --sds-max-message-bytes", l.ContextMap())
		}
	}
	// A request under the limit on the same connection is served.
	if _, err := sdstest.Fetch(ctx, h.conn, []string{def}); err != nil {
		t.Fatal(err)
	}
}

// TestHalfOpenConnectionClosed: a connection that never sends its HTTP/2
// preface is closed after the handshake timeout (gRPC's default holds it
// for 120 s).
func TestHalfOpenConnectionClosed(t *testing.T) {
	h := newHarnessWith(t, harnessOptions{limits: Limits{HandshakeTimeout: 200 * time.Millisecond}})
	conn, err := net.Dial("unix", h.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The read ends when the server closes the connection; the deadline
	// only bounds a failing test.
	if err := conn.SetReadDeadline(time.Now().Add(waitFor)); err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(conn)
	if err != nil {
		t.Fatalf("connection not closed by the server: %v", err)
	}
	// The timed-out read is counted before gRPC closes the connection.
	if got := h.rejections(limitHandshake); got != 1 {
		t.Fatalf("rejections{handshake_timeout} = %v, want 1", got)
	}
	// Clients that speak HTTP/2 are unaffected.
	h.publishAll()
	h.waitServed(def, root)
	if _, err := sdstest.Fetch(h.ctx(), h.conn, []string{def}); err != nil {
		t.Fatal(err)
	}
}

func TestSocketPathTooLong(t *testing.T) {
	dir := filepath.Join(shortDir(t), "a-directory-that-must-not-be-created")
	path := filepath.Join(dir, strings.Repeat("s", 120-len(dir)-1))
	if len(path) != 120 {
		t.Fatalf("test path is %d bytes", len(path))
	}
	for name, err := range map[string]error{
		"Listen": func() error { lis, err := Listen(path, 0o600); closeIf(lis); return err }(),
		"New":    func() error { _, err := New(Config{SocketPath: path, Source: testSource{}}); return err }(),
	} {
		if err == nil || !strings.Contains(err.Error(), "120 bytes") || !strings.Contains(err.Error(), "107") {
			t.Errorf("%s = %v, want an error naming the length 120 and the limit 107", name, err)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the socket's directory was created: %v", err)
	}
	// 107 bytes is the longest path that works.
	ok := filepath.Join(shortDir(t), "d")
	ok = filepath.Join(ok, strings.Repeat("s", maxSocketPath-len(ok)-1))
	lis, err := Listen(ok, 0o600)
	if err != nil {
		t.Fatalf("Listen(%d bytes) = %v", len(ok), err)
	}
	_ = lis.Close()
}

func closeIf(lis net.Listener) {
	if lis != nil {
		_ = lis.Close()
	}
}

// TestConnectionLimit: a connection over --sds-max-connections is closed
// as it is accepted, with an error that names the flag, and counted;
// once a connection closes, a new one is served.
func TestConnectionLimit(t *testing.T) {
	h := newHarnessWith(t, harnessOptions{limits: Limits{MaxConnections: 2}})
	h.publishAll()
	ctx := h.ctx()
	if _, err := sdstest.Fetch(ctx, h.conn, []string{def}); err != nil {
		t.Fatal(err)
	}
	second, err := sdstest.Dial(ctx, h.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if _, err := sdstest.Fetch(ctx, second, []string{def}); err != nil {
		t.Fatal(err)
	}

	third, err := grpc.NewClient("unix://"+h.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	_, err = sdstest.Fetch(ctx, third, []string{def})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "--sds-max-connections") {
		t.Fatalf("fetch on a connection over the limit = %v, want ResourceExhausted naming --sds-max-connections", err)
	}
	third.Close()
	if got := h.rejections(limitConnections); got < 1 {
		t.Fatalf("rejections{connections} = %v, want at least 1", got)
	}
	logged := h.logs.FilterMessage("connection refused by a limit").All()
	if len(logged) == 0 || !strings.Contains(logged[0].ContextMap()["error"].(string), "--sds-max-connections") {
		t.Fatalf("log lines = %v, want one naming --sds-max-connections", logged)
	}

	// A connection that closes makes room.
	second.Close()
	waitCond(t, "the closed connection counted out", func() bool { conns, _ := h.srv.Open(); return conns == 1 })
	again, err := sdstest.Dial(ctx, h.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if _, err := sdstest.Fetch(ctx, again, []string{def}); err != nil {
		t.Fatalf("fetch after a connection closed: %v", err)
	}
}

// waitCond polls cond until it holds, failing the test after waitFor.
func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: timed out", what)
		}
		<-tick.C
	}
}

// TestRefusedConnectionsAnsweredWithinBound: refused connections that
// never send a request hold at most maxDraining answering goroutines;
// one more refused connection is closed at once, without an answer.
func TestRefusedConnectionsAnsweredWithinBound(t *testing.T) {
	h := newHarnessWith(t, harnessOptions{limits: Limits{MaxConnections: 1, HandshakeTimeout: waitFor}})
	h.publishAll()
	if _, err := sdstest.Fetch(h.ctx(), h.conn, []string{def}); err != nil {
		t.Fatal(err)
	}
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("unix", h.socket)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		// The deadline only bounds a failing test.
		if err := c.SetReadDeadline(time.Now().Add(waitFor)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// Each of these is answered: it gets the server's SETTINGS frame,
	// then waits for a request it never sends.
	for i := range maxDraining {
		f, err := http2.NewFramer(nil, dial()).ReadFrame()
		if _, ok := f.(*http2.SettingsFrame); !ok || err != nil {
			t.Fatalf("refused connection %d: read %v, %v; want a SETTINGS frame", i, f, err)
		}
	}
	// All answering goroutines are taken: the next is closed unanswered.
	if b, err := io.ReadAll(dial()); err != nil || len(b) != 0 {
		t.Fatalf("connection over the answering bound: read %d bytes, %v; want it closed at once", len(b), err)
	}
	if got := h.rejections(limitConnections); got != maxDraining+1 {
		t.Fatalf("rejections{connections} = %v, want %d", got, maxDraining+1)
	}
}
