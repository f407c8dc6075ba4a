package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// The SPIRE deployment the peers figure runs: one spire-server with a
// SQLite datastore and an in-memory key manager in the temp dir, one
// spire-agent attested with a join token, serving SDS on its Workload API
// socket, and one registration entry that gives any process of our uid an
// X509-SVID. make bench-peers builds the binaries (hack/build-spire.sh).
const (
	// spireVersion is the release make peer-tools builds into
	// $SDSAGENT_TOOLS_DIR/spire-<version>/bin (Makefile SPIRE_VERSION).
	spireVersion     = "v1.13.3"
	spireTrustDomain = "sdsbench.test"
	// spireWorkloadPath is the SPIFFE ID path of the entry for sdsbench.
	spireWorkloadPath = "/sdsbench"
	// spireSVIDTTL keeps the SVID from rotating during a run: the agent
	// renews at half its life.
	spireSVIDTTL = time.Hour
	// spireStartLimit bounds the server's start (SQLite schema, CA key)
	// and the agent's attestation and first SVID on a loaded machine.
	spireStartLimit = 60 * time.Second
	// spirePoll is how often the agent's SDS is asked for the SVID until
	// it has one; it answers InvalidArgument until then.
	spirePoll = 100 * time.Millisecond
	// spireServerReady is spire-server's log message once an API listens;
	// it logs it once for TCP and once for its local socket.
	spireServerReady = "Starting Server APIs"
)

// spireLayout is where one SPIRE deployment keeps its files, and how its
// parts find each other.
type spireLayout struct {
	dir          string // holds everything below
	serverAddr   string // host:port of the server's agent API (TCP)
	serverSocket string // the server's local API, for the CLI
	agentSocket  string // the Workload API and SDS socket
}

func newSpireLayout(dir, serverAddr string) spireLayout {
	return spireLayout{
		dir:          dir,
		serverAddr:   serverAddr,
		serverSocket: filepath.Join(dir, "s.sock"),
		agentSocket:  filepath.Join(dir, "a.sock"),
	}
}

// serverConfig returns spire-server's HCL configuration.
func (l spireLayout) serverConfig() (string, error) {
	host, port, err := net.SplitHostPort(l.serverAddr)
	if err != nil {
		return "", fmt.Errorf("spire server address %q: %w", l.serverAddr, err)
	}
	return fmt.Sprintf(`server {
    bind_address = %q
    bind_port = %q
    socket_path = %q
    trust_domain = %q
    data_dir = %q
    log_level = "INFO"
    log_format = "json"
    default_x509_svid_ttl = %q
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = %q
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
`, host, port, l.serverSocket, spireTrustDomain, filepath.Join(l.dir, "server"), spireSVIDTTL.String(),
		filepath.Join(l.dir, "server", "datastore.sqlite3")), nil
}

// agentConfig returns spire-agent's HCL configuration. The agent trusts
// the server on first contact (insecure_bootstrap): both run here, and
// the bootstrap is not what is measured.
func (l spireLayout) agentConfig() (string, error) {
	host, port, err := net.SplitHostPort(l.serverAddr)
	if err != nil {
		return "", fmt.Errorf("spire server address %q: %w", l.serverAddr, err)
	}
	return fmt.Sprintf(`agent {
    data_dir = %q
    log_level = "INFO"
    log_format = "json"
    server_address = %q
    server_port = %q
    socket_path = %q
    trust_domain = %q
    insecure_bootstrap = true
    sds {
        default_svid_name = %q
        default_bundle_name = %q
    }
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
}
`, filepath.Join(l.dir, "agent"), host, port, l.agentSocket, spireTrustDomain,
		sdstest.CertName, sdstest.RootName), nil
}

// writeConfigs writes both configurations and the data directories and
// returns the configurations' paths.
func (l spireLayout) writeConfigs() (server, agent string, err error) {
	sc, err := l.serverConfig()
	if err != nil {
		return "", "", err
	}
	ac, err := l.agentConfig()
	if err != nil {
		return "", "", err
	}
	for _, d := range []string{filepath.Join(l.dir, "server"), filepath.Join(l.dir, "agent")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", "", fmt.Errorf("spire config: %w", err)
		}
	}
	server, agent = filepath.Join(l.dir, "server.conf"), filepath.Join(l.dir, "agent.conf")
	if err := os.WriteFile(server, []byte(sc), 0o600); err != nil {
		return "", "", fmt.Errorf("spire config: %w", err)
	}
	if err := os.WriteFile(agent, []byte(ac), 0o600); err != nil {
		return "", "", fmt.Errorf("spire config: %w", err)
	}
	return server, agent, nil
}

// parseJoinToken returns the token of `spire-server token generate`'s
// output ("Token: <value>").
func parseJoinToken(out []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Token:"); ok && strings.TrimSpace(v) != "" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("no \"Token: <value>\" line in spire-server token generate's output: %q", out)
}

// joinTokenAgentID is the SPIFFE ID the server gives an agent attested
// with token.
func joinTokenAgentID(token string) string {
	return "spiffe://" + spireTrustDomain + "/spire/agent/join_token/" + token
}

// spirePeer is a running spire-server and spire-agent.
type spirePeer struct {
	server, agent *proc
	socket        string // the agent's SDS socket
}

func (s *spirePeer) kill() {
	if s.agent != nil {
		s.agent.kill()
	}
	s.server.kill()
}

// startSpire starts spire-server, mints a join token, registers an entry
// for this process's uid, starts spire-agent with the token, and returns
// once the agent serves "default" on SDS.
func (b *bencher) startSpire(ctx context.Context) (*spirePeer, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	l := newSpireLayout(filepath.Join(b.tmp, "spire"), addr)
	serverConf, agentConf, err := l.writeConfigs()
	if err != nil {
		return nil, err
	}
	server, err := startSpireServer(ctx, b.p.peerServer, serverConf)
	if err != nil {
		return nil, err
	}
	s := &spirePeer{server: server, socket: l.agentSocket}
	if err := s.startAgent(ctx, b.p, l, agentConf); err != nil {
		s.kill()
		return nil, err
	}
	return s, nil
}

// startAgent mints a join token, registers the entry for this process's
// uid under the agent the token will attest, starts spire-agent with the
// token and waits for the SVID on its SDS.
func (s *spirePeer) startAgent(ctx context.Context, p params, l spireLayout, conf string) error {
	cli := func(args ...string) ([]byte, error) {
		out, err := exec.CommandContext(ctx, p.peerServer, append(args, "-socketPath", l.serverSocket)...).CombinedOutput()
		if err != nil {
			return nil, s.server.failure(fmt.Errorf("spire-server %s: %w: %s", strings.Join(args[:2], " "), err, bytes.TrimSpace(out)))
		}
		return out, nil
	}
	out, err := cli("token", "generate", "-ttl", "600")
	if err != nil {
		return err
	}
	token, err := parseJoinToken(out)
	if err != nil {
		return err
	}
	if _, err := cli("entry", "create", "-parentID", joinTokenAgentID(token),
		"-spiffeID", "spiffe://"+spireTrustDomain+spireWorkloadPath,
		"-selector", fmt.Sprintf("unix:uid:%d", os.Getuid())); err != nil {
		return err
	}
	if s.agent, _, err = startProc(ctx, "spire-agent", p.peerAgent, nil, "run", "-config", conf, "-joinToken", token); err != nil {
		return err
	}
	return waitSpireSVID(s.agent, l.agentSocket)
}

// startSpireServer starts spire-server with conf and returns once it logs
// that both its TCP and its local API listen.
func startSpireServer(ctx context.Context, bin, conf string) (*proc, error) {
	ready := make(chan struct{})
	seen := map[string]bool{}
	onLine := func(line []byte) {
		var l struct {
			Msg     string `json:"msg"`
			Network string `json:"network"`
		}
		if json.Unmarshal(line, &l) != nil || l.Msg != spireServerReady || seen["tcp"] && seen["unix"] {
			return
		}
		seen[l.Network] = true
		if seen["tcp"] && seen["unix"] {
			close(ready)
		}
	}
	p, _, err := startProc(ctx, "spire-server", bin, onLine, "run", "-config", conf)
	if err != nil {
		return nil, err
	}
	timer := time.NewTimer(spireStartLimit)
	defer timer.Stop()
	select {
	case <-ready:
		return p, nil
	case <-p.ctx.Done():
		p.kill()
		return nil, p.failure(fmt.Errorf("no %q lines for tcp and unix", spireServerReady))
	case <-timer.C:
		p.kill()
		return nil, p.failure(fmt.Errorf("no %q lines for tcp and unix within %s", spireServerReady, spireStartLimit))
	}
}

// waitSpireSVID asks the agent's SDS for "default" every spirePoll until
// a valid one comes, within spireStartLimit: until the agent has attested
// and fetched the SVID it refuses the name with InvalidArgument.
func waitSpireSVID(agent *proc, socket string) error {
	ctx, cancel := context.WithTimeout(agent.ctx, spireStartLimit)
	defer cancel()
	conn, err := dial(ctx, socket)
	if err != nil {
		return agent.failure(fmt.Errorf("dial spire-agent: %w", err))
	}
	defer conn.Close()
	var last error
	for {
		if last = trySVID(ctx, conn); last == nil {
			return nil
		}
		if err := sleep(ctx, spirePoll); err != nil {
			return agent.failure(fmt.Errorf("spire-agent served no %q within %s: %w", sdstest.CertName, spireStartLimit, last))
		}
	}
}

// trySVID opens one stream on conn and waits for a valid "default".
func trySVID(ctx context.Context, conn *grpc.ClientConn) error {
	set, err := openStreams(ctx, conns1(conn), 1)
	if err != nil {
		return err
	}
	set.close()
	return nil
}

// errNoPeer says how to get the SPIRE binaries.
var errNoPeer = errors.New("-only peers needs -peer-agent and -peer-server: build spire-agent and spire-server v1.13.3 with `make peer-tools`, or run `make bench-peers`")
