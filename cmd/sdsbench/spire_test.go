package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdsagent/sdsagent/internal/testtools"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// spireBinaries returns spire-server and spire-agent as make peer-tools
// builds them, or skips: they are built only for make bench-peers, which
// is not part of CI, so a missing build is a skip even there.
func spireBinaries(t *testing.T) (server, agent string) {
	t.Helper()
	dir := filepath.Join("spire-"+spireVersion, "bin")
	server = testtools.Find(os.Getenv, filepath.Join(dir, "spire-server"))
	agent = testtools.Find(os.Getenv, filepath.Join(dir, "spire-agent"))
	if server == "" || agent == "" {
		t.Skipf("spire-server and spire-agent %s not found in %s; build them with: make peer-tools", spireVersion, filepath.Join(testtools.Dir(os.Getenv), dir))
	}
	return server, agent
}

func TestParseJoinToken(t *testing.T) {
	tests := []struct {
		name, out, want, err string
	}{
		{name: "pretty output", out: "Token: 3b1d8f0a-7c1e-4e5e-9d55-0c4b2f1e2a77\n", want: "3b1d8f0a-7c1e-4e5e-9d55-0c4b2f1e2a77"},
		{name: "with a warning after it", out: "Token: abc\nWarning: Missing SPIFFE ID.\n", want: "abc"},
		{name: "empty value", out: "Token: \n", err: "no \"Token: <value>\" line"},
		{name: "no token", out: "Error: connection refused\n", err: "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseJoinToken([]byte(tt.out))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %q, %v; want an error with %q", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if id := joinTokenAgentID("abc"); id != "spiffe://sdsbench.test/spire/agent/join_token/abc" {
		t.Fatalf("agent id %q", id)
	}
}

func TestSpireConfigs(t *testing.T) {
	dir := t.TempDir()
	l := newSpireLayout(dir, "127.0.0.1:40123")
	sc, err := l.serverConfig()
	if err != nil {
		t.Fatal(err)
	}
	ac, err := l.agentConfig()
	if err != nil {
		t.Fatal(err)
	}
	// The parts must find each other: the agent dials the server's
	// address, and the SDS names are the ones Envoy (and the load) ask for.
	for _, want := range []string{`bind_address = "127.0.0.1"`, `bind_port = "40123"`, `socket_path = "` + l.serverSocket + `"`,
		`trust_domain = "sdsbench.test"`, `database_type = "sqlite3"`, `connection_string = "` + filepath.Join(dir, "server", "datastore.sqlite3") + `"`,
		`NodeAttestor "join_token"`, `default_x509_svid_ttl = "1h0m0s"`} {
		if !strings.Contains(sc, want) {
			t.Errorf("server config lacks %s:\n%s", want, sc)
		}
	}
	for _, want := range []string{`server_address = "127.0.0.1"`, `server_port = "40123"`, `socket_path = "` + l.agentSocket + `"`,
		`trust_domain = "sdsbench.test"`, `default_svid_name = "default"`, `default_bundle_name = "ROOTCA"`,
		`NodeAttestor "join_token"`, `WorkloadAttestor "unix"`} {
		if !strings.Contains(ac, want) {
			t.Errorf("agent config lacks %s:\n%s", want, ac)
		}
	}
	if _, err := newSpireLayout(dir, "no-port").serverConfig(); err == nil || !strings.Contains(err.Error(), `spire server address "no-port"`) {
		t.Fatalf("server config with a bad address: %v", err)
	}
	if _, err := newSpireLayout(dir, "no-port").agentConfig(); err == nil {
		t.Fatal("agent config with a bad address: no error")
	}
}

// TestSpireAcceptsTheConfigs runs SPIRE's own validate on the configs
// writeConfigs writes, when make peer-tools has built SPIRE.
func TestSpireAcceptsTheConfigs(t *testing.T) {
	server, agent := spireBinaries(t)
	l := newSpireLayout(t.TempDir(), "127.0.0.1:40123")
	sc, ac, err := l.writeConfigs()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ bin, conf string }{{server, sc}, {agent, ac}} {
		out, err := exec.Command(c.bin, "validate", "-config", c.conf).CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("is valid")) {
			t.Errorf("%s validate -config %s: %v\n%s", filepath.Base(c.bin), c.conf, err, out)
		}
	}
}

// startSpireIn starts SPIRE's server and agent binaries as the peers
// figure does, in a short temporary directory removed when t ends.
func startSpireIn(ctx context.Context, t *testing.T, server, agent string) (*spirePeer, error) {
	t.Helper()
	tmp, err := os.MkdirTemp("", "sp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(tmp) })
	b := &bencher{p: params{peerAgent: agent, peerServer: server}, tmp: tmp}
	return b.startSpire(ctx)
}

// TestStartSpireServesTheSVID starts SPIRE as the peers figure does and
// checks that spire-agent serves this process an SVID with the entry's
// SPIFFE ID over SDS, when make peer-tools has built SPIRE.
func TestStartSpireServesTheSVID(t *testing.T) {
	if testing.Short() {
		t.Skip("starts spire-server and spire-agent")
	}
	server, agent := spireBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*spireStartLimit)
	defer cancel()
	s, err := startSpireIn(ctx, t, server, agent)
	if err != nil {
		t.Fatal(err)
	}
	defer s.kill()

	conn, err := dial(ctx, s.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := sdstest.OpenStream(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Request(sdstest.CertName, sdstest.RootName); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id, err := sdstest.IdentityFrom(resp.Secrets)
	if err != nil {
		t.Fatal(err)
	}
	got, err := id.SPIFFEID()
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://" + spireTrustDomain + spireWorkloadPath; got != want {
		t.Fatalf("SVID %s, want %s", got, want)
	}
	if err := st.ACK(); err != nil {
		t.Fatal(err)
	}
	// The key works and the chain verifies against the ROOTCA served with
	// it (SPIRE serves it in the SPIFFE validator's form): two workloads
	// with it complete a mutual TLS handshake.
	if err := sdstest.MTLS(ctx, id, id); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*proc{s.agent, s.server} {
		if err := p.stop(stopLimit); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPeerFormats(t *testing.T) {
	v := [3]float64{2, 3, 4}
	if got, want := peerValues(v, "%.1f"), "floor=2.0 agent=3.0 spire=4.0"; got != want {
		t.Errorf("peerValues = %q, want %q", got, want)
	}
	if got, want := peerRatios(v), "spire/floor=2.00x agent/floor=1.50x agent/spire=0.75x"; got != want {
		t.Errorf("peerRatios = %q, want %q", got, want)
	}
	if got, want := peerRatios([3]float64{0, 3, 0}), "spire/floor=n/a agent/floor=n/a agent/spire=n/a"; got != want {
		t.Errorf("peerRatios of zeros = %q, want %q", got, want)
	}
}

func TestPeersNeedBothBinaries(t *testing.T) {
	for _, args := range [][]string{
		{"-agent", "x", "-only", "peers"},
		{"-agent", "x", "-peer-agent", "/bin/true"},
		{"-agent", "x", "-peer-server", "/bin/true", "-only", "exec"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), args, &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), "needs -peer-agent and -peer-server") || !strings.Contains(stderr.String(), "make peer-tools") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 saying how to get SPIRE", args, code, stderr.String())
		}
	}
}

// TestStartSpireReportsADeadPart checks that a part that exits at once
// fails startSpire with a message naming it, instead of a wait to the
// limit: the server (any machine), and the agent (when SPIRE is built).
func TestStartSpireReportsADeadPart(t *testing.T) {
	start := func(t *testing.T, server, agent string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*spireStartLimit)
		defer cancel()
		s, err := startSpireIn(ctx, t, server, agent)
		if err == nil {
			s.kill()
		}
		t.Log(err)
		return err
	}
	t.Run("server", func(t *testing.T) {
		err := start(t, "/bin/false", "/bin/false")
		if err == nil || !strings.Contains(err.Error(), "spire-server died") || !strings.Contains(err.Error(), spireServerReady) {
			t.Fatalf("err = %v; want spire-server died before %q", err, spireServerReady)
		}
	})
	t.Run("agent", func(t *testing.T) {
		if testing.Short() {
			t.Skip("starts spire-server")
		}
		server, _ := spireBinaries(t)
		err := start(t, server, "/bin/false")
		if err == nil || !strings.Contains(err.Error(), "dial spire-agent") || !strings.Contains(err.Error(), "spire-agent died") {
			t.Fatalf("err = %v; want spire-agent died before its socket was dialled", err)
		}
	})
}
