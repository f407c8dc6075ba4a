package sds

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// TestDeltaResubscribeResends: the xDS protocol says a server must send a
// resource the client subscribes to again, since the client may have
// forgotten it (Envoy does this when interest is dropped and re-added).
func TestDeltaResubscribeResends(t *testing.T) {
	h := newHarness(t)
	leaf := h.publishAll()
	st := h.openDelta()
	if err := st.Subscribe(def); err != nil {
		t.Fatal(err)
	}
	first := h.recvDelta(st)
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}
	if err := st.Subscribe(def); err != nil {
		t.Fatal(err)
	}
	again := h.recvDelta(st)
	if got := again.Names(); !slices.Equal(got, []string{def}) {
		t.Fatalf("re-subscribe answered %v, want [default]", got)
	}
	checkLeaf(t, again.Secret, leaf)
	if again.Versions[def] != first.Versions[def] {
		t.Errorf("version %q, want the unchanged %q", again.Versions[def], first.Versions[def])
	}
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}
	// Subscribing to another name re-sends only that one.
	if err := st.Subscribe(root); err != nil {
		t.Fatal(err)
	}
	if got := h.recvDelta(st).Names(); !slices.Equal(got, []string{root}) {
		t.Fatalf("names = %v, want [ROOTCA]", got)
	}
}

// TestDeltaNameThatCannotExist: a name the agent can never serve is
// answered in removed_resources, so Envoy stops waiting for it; a name
// that may exist later is held.
func TestDeltaNameThatCannotExist(t *testing.T) {
	h := newHarness(t)
	st := h.openDelta()
	// default may exist later: held, no answer.
	if err := st.Subscribe(def); err != nil {
		t.Fatal(err)
	}
	h.expectQuietDelta(st)
	if err := st.Subscribe("bogus"); err != nil {
		t.Fatal(err)
	}
	resp := h.recvDelta(st)
	if len(resp.Secrets) != 0 || !slices.Equal(resp.Removed, []string{"bogus"}) {
		t.Fatalf("names %v removed %v, want removed [bogus]", resp.Names(), resp.Removed)
	}
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}
	// Asked again, answered again; default still held.
	if err := st.Subscribe("bogus"); err != nil {
		t.Fatal(err)
	}
	if resp := h.recvDelta(st); !slices.Equal(resp.Removed, []string{"bogus"}) || len(resp.Secrets) != 0 {
		t.Fatalf("names %v removed %v, want removed [bogus]", resp.Names(), resp.Removed)
	}
	leaf := h.publishLeaf(spiffeA)
	resp = h.recvDelta(st)
	if got := resp.Names(); !slices.Equal(got, []string{def}) || len(resp.Removed) != 0 {
		t.Fatalf("names %v removed %v, want [default] only", got, resp.Removed)
	}
	checkLeaf(t, resp.Secret, leaf)
}

// TestDeltaMissingFileIsHeld: a file-root: name whose file is not there
// yet may exist later, so it is held, while a malformed one is removed.
func TestDeltaMissingFileIsHeld(t *testing.T) {
	mh := newManagerHarness(t)
	missing := cache.FileRootPrefix + filepath.Join(t.TempDir(), "ca.pem")
	st := mh.openDelta()
	if err := st.Subscribe(missing); err != nil {
		t.Fatal(err)
	}
	mh.expectQuietDelta(st)
	bad := cache.FileRootPrefix + "relative/ca.pem"
	if err := st.Subscribe(bad); err != nil {
		t.Fatal(err)
	}
	resp := mh.recvDelta(st)
	if !slices.Equal(resp.Removed, []string{bad}) || len(resp.Secrets) != 0 {
		t.Fatalf("names %v removed %v, want removed [%s]", resp.Names(), resp.Removed, bad)
	}
}

// TestExpiredWorkloadCertIsHeld: a default past NotAfter is not sent to
// a new stream, a delta subscribe or a fetch; they wait as before the
// first certificate and are answered when a valid one is published.
// Streams that have it keep it: no push, no removal.
func TestExpiredWorkloadCertIsHeld(t *testing.T) {
	clk := clocktest.New(time.Now())
	h := newHarnessWith(t, harnessOptions{clock: clk})
	h.publishRoots()
	old := h.publishLeaf(spiffeA)

	// Streams that get default while it is valid.
	holder := h.openStream()
	if err := holder.Request(def); err != nil {
		t.Fatal(err)
	}
	checkLeaf(t, h.recv(holder).Secret, old)
	if err := holder.ACK(); err != nil {
		t.Fatal(err)
	}
	dholder := h.openDelta()
	if err := dholder.Subscribe(def); err != nil {
		t.Fatal(err)
	}
	h.recvDelta(dholder)
	if err := dholder.ACK(); err != nil {
		t.Fatal(err)
	}
	current, err := sdstest.Fetch(h.ctx(), h.conn, []string{def})
	if err != nil {
		t.Fatal(err)
	}

	clk.Set(old.Cert.NotAfter.Add(time.Second))

	sotw := h.openStream()
	if err := sotw.Request(def, root); err != nil {
		t.Fatal(err)
	}
	if got := h.recv(sotw).Names(); !slices.Equal(got, []string{root}) {
		t.Fatalf("new stream got %v, want only ROOTCA", got)
	}
	if err := sotw.ACK(); err != nil {
		t.Fatal(err)
	}
	delta := h.openDelta()
	if err := delta.Subscribe(def); err != nil {
		t.Fatal(err)
	}
	h.expectQuietDelta(delta)
	// Re-subscribing on a stream that holds it is asking for it anew.
	if err := dholder.Subscribe(def); err != nil {
		t.Fatal(err)
	}
	h.expectQuietDelta(dholder)
	h.expectQuiet(sotw)
	h.expectQuiet(holder)
	if _, err := sdstest.Fetch(h.ctx(), h.conn, []string{def}); status.Code(err) != codes.NotFound {
		t.Fatalf("Fetch of an expired default = %v, want NotFound", err)
	}
	// A fetch whose version says it has it gets it again.
	if resp, err := sdstest.Fetch(h.ctx(), h.conn, []string{def}, sdstest.WithVersion(current.Version)); err != nil || len(resp.Secrets) != 1 {
		t.Fatalf("Fetch holding the version = %v, %v", resp, err)
	}
	if got := h.srv.Streams()[0]; got.Names[0] != def {
		t.Fatalf("holder stream lost its subscription: %+v", got)
	}

	// A valid certificate is sent at once to every stream that asks.
	fresh := h.issuer.IssueLeaf(t, testpki.LeafOptions{URIs: []string{spiffeA}, NotAfter: clk.Now().Add(time.Hour)})
	h.mu.Lock()
	h.keys = append(h.keys, fresh.KeyPEM)
	h.mu.Unlock()
	h.store.Update([]*cache.Secret{leafSecret(fresh)}, nil)
	for _, st := range []*sdstest.Stream{sotw, holder} {
		checkLeaf(t, h.recv(st).Secret, fresh)
	}
	for _, st := range []*sdstest.DeltaStream{delta, dholder} {
		resp := h.recvDelta(st)
		checkLeaf(t, resp.Secret, fresh)
		if len(resp.Removed) != 0 {
			t.Fatalf("removed %v", resp.Removed)
		}
	}
	resp, err := sdstest.Fetch(h.ctx(), h.conn, []string{def})
	if err != nil {
		t.Fatal(err)
	}
	checkLeaf(t, resp.Secret, fresh)
}

// TestRestartedAgentAnswersReconnect: Envoy reconnecting to a restarted
// agent (a new Server on the same socket) sends the version it accepted
// from the old one and its names, without a nonce; it is answered as
// soon as the new agent has a certificate, never taken as up to date.
func TestRestartedAgentAnswersReconnect(t *testing.T) {
	dir := shortDir(t)
	socket := filepath.Join(dir, "s.sock")
	rootCA := testpki.NewRoot(t, "restart root")
	issuer := rootCA.NewIntermediate(t, "restart intermediate")
	run := func(store *cache.Store) (stop func()) {
		srv, err := New(Config{SocketPath: socket, Source: testSource{store}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run = %v", err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	for _, tt := range []struct {
		name string
		// certFirst publishes the new agent's certificate before the
		// client reconnects.
		certFirst bool
	}{{"certificate after reconnect", false}, {"certificate before reconnect", true}} {
		t.Run(tt.name, func(t *testing.T) {
			store := cache.NewStore(clocktest.New(time.Now()))
			first := issuer.IssueLeaf(t, testpki.LeafOptions{URIs: []string{spiffeA}})
			store.Update([]*cache.Secret{leafSecret(first)}, nil)
			stop := run(store)
			conn, err := sdstest.Dial(ctx, socket)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			st, err := sdstest.OpenStream(ctx, conn)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Request(def); err != nil {
				t.Fatal(err)
			}
			got, err := st.Recv(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.ACK(); err != nil {
				t.Fatal(err)
			}
			st.Close()
			stop()

			// The restarted agent: same socket, new process state.
			store2 := cache.NewStore(clocktest.New(time.Now()))
			next := issuer.IssueLeaf(t, testpki.LeafOptions{URIs: []string{spiffeA}})
			if tt.certFirst {
				store2.Update([]*cache.Secret{leafSecret(next)}, nil)
			}
			defer run(store2)()
			conn2, err := sdstest.Dial(ctx, socket)
			if err != nil {
				t.Fatal(err)
			}
			defer conn2.Close()
			st2, err := sdstest.OpenStream(ctx, conn2)
			if err != nil {
				t.Fatal(err)
			}
			defer st2.Close()
			err = st2.Send(&discoveryv3.DiscoveryRequest{
				VersionInfo: got.Version, Node: sdstest.DefaultNode(),
				ResourceNames: []string{def}, TypeUrl: resource.SecretType,
			})
			if err != nil {
				t.Fatal(err)
			}
			if !tt.certFirst {
				quiet, cancelQuiet := context.WithTimeout(ctx, quiet)
				if resp, err := st2.Recv(quiet); err == nil {
					t.Fatalf("answered %v before the new agent had a certificate", resp.Names())
				}
				cancelQuiet()
				store2.Update([]*cache.Secret{leafSecret(next)}, nil)
			}
			resp, err := st2.Recv(ctx)
			if err != nil {
				t.Fatal(err)
			}
			checkLeaf(t, resp.Secret, next)
			if resp.Version == got.Version {
				t.Errorf("the restarted agent reused version %q", resp.Version)
			}

			// A delta client says which versions it holds.
			d, err := sdstest.OpenDeltaStream(ctx, conn2)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			err = d.Send(&discoveryv3.DeltaDiscoveryRequest{
				Node: sdstest.DefaultNode(), TypeUrl: resource.SecretType,
				ResourceNamesSubscribe:  []string{def},
				InitialResourceVersions: map[string]string{def: got.Version},
			})
			if err != nil {
				t.Fatal(err)
			}
			dresp, err := d.Recv(ctx)
			if err != nil {
				t.Fatal(err)
			}
			checkLeaf(t, dresp.Secret, next)
		})
	}
}

// TestDeltaInitialVersionsOfThisAgent: a delta client reconnecting to the
// same agent with the version it holds is not sent that secret again.
func TestDeltaInitialVersionsOfThisAgent(t *testing.T) {
	h := newHarness(t)
	h.publishAll()
	st := h.openDelta()
	if err := st.Subscribe(def); err != nil {
		t.Fatal(err)
	}
	first := h.recvDelta(st)
	st.Close()
	d := h.openDelta()
	err := d.Send(&discoveryv3.DeltaDiscoveryRequest{
		Node: sdstest.DefaultNode(), TypeUrl: resource.SecretType,
		ResourceNamesSubscribe:  []string{def, root},
		InitialResourceVersions: map[string]string{def: first.Versions[def]},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := h.recvDelta(d).Names(); !slices.Equal(got, []string{root}) {
		t.Fatalf("names = %v, want only ROOTCA (default is held at its version)", got)
	}
}

func TestSecretTypeURL(t *testing.T) {
	if secretType != resource.SecretType {
		t.Fatalf("secretType = %q, want go-control-plane's %q", secretType, resource.SecretType)
	}
}
