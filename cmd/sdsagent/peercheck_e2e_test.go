package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/internal/peercred/peercredtest"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// peerChildEnv makes the test binary an SDS client (peerChild) instead
// of running tests; peerChildModeEnv picks what it does.
const (
	peerChildEnv     = "SDSAGENT_TEST_PEER_CHILD_SOCKET"
	peerChildModeEnv = "SDSAGENT_TEST_PEER_CHILD_MODE"
)

// peerChild asks the agent on socket for default and ROOTCA like Envoy
// and prints "sds ok NAMES" or "sds failed CODE"; in mode raw it only
// connects and prints how many bytes it read before EOF.
func peerChild(socket string) int {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if os.Getenv(peerChildModeEnv) == "raw" {
		conn, err := net.Dial("unix", socket)
		if err != nil {
			fmt.Println("dial:", err)
			return 1
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(waitLimit))
		data, err := io.ReadAll(conn)
		fmt.Printf("raw %d bytes (%v)\n", len(data), err)
		return 0
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("client:", err)
		return 1
	}
	defer conn.Close()
	st, err := sdstest.OpenStream(ctx, conn)
	if err == nil {
		defer st.Close()
		err = st.Request("default", "ROOTCA")
	}
	var resp *sdstest.Response
	if err == nil {
		resp, err = st.Recv(ctx)
	}
	if err != nil {
		fmt.Println("sds failed", status.Code(err))
		return 0
	}
	fmt.Println("sds ok", strings.Join(resp.Names(), ","))
	return 0
}

var refusedMetricRE = regexp.MustCompile(`(?m)^sdsagent_sds_connections_refused_total (\d+)$`)

func TestAgentSocketAllowsOnlyListedUIDsAndGIDs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: running SDS clients under other uids and gids needs root (CI runs as root)")
	}
	const allowedUID, allowedGID, other = 4201, 4302, 4999
	bin := peercredtest.Binary(t)
	ca := startCA(t, "127.0.0.1:0")
	// File modes are no boundary here: anyone may reach and open the socket.
	dir := tempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "s.sock")
	a := startAgent(t, ca.agentArgs(socket, "--socket-mode", "0666",
		"--allowed-uids", strconv.Itoa(allowedUID), "--allowed-gids", strconv.Itoa(allowedGID)))
	a.logs.waitLine(t, "workload certificate issued")

	for _, c := range []struct {
		name     string
		uid, gid uint32
	}{
		{"allowed uid", allowedUID, other},
		{"allowed gid", other, allowedGID},
	} {
		if _, out := peercredtest.Run(t, bin, c.uid, c.gid, peerChildEnv+"="+socket, peerChildModeEnv+"=sds"); out != "sds ok default,ROOTCA" && out != "sds ok ROOTCA,default" {
			t.Fatalf("%s: child got %q, want default and ROOTCA", c.name, out)
		}
	}
	if _, body := a.get(t, "/metrics"); !strings.Contains(body, "sdsagent_sds_connections_refused_total 0") {
		t.Fatalf("allowed callers counted as refused:\n%s", refusedMetricRE.FindString(body))
	}

	pid, out := peercredtest.Run(t, bin, other, other, peerChildEnv+"="+socket, peerChildModeEnv+"=sds")
	if out != "sds failed Unavailable" {
		t.Fatalf("caller with neither uid nor gid allowed got %q, want no SDS", out)
	}
	line := a.logs.waitLine(t, "sds connection refused")
	if line["uid"] != float64(other) || line["gid"] != float64(other) || line["pid"] != float64(pid) {
		t.Fatalf("refusal log line %v, want uid %d gid %d pid %d", line, other, other, pid)
	}
	rawPID, out := peercredtest.Run(t, bin, other, other, peerChildEnv+"="+socket, peerChildModeEnv+"=raw")
	if !strings.HasPrefix(out, "raw 0 bytes") {
		t.Fatalf("refused raw connection: %q, want EOF before any byte", out)
	}

	_, metrics := a.get(t, "/metrics")
	m := refusedMetricRE.FindStringSubmatch(metrics)
	if m == nil {
		t.Fatalf("no sdsagent_sds_connections_refused_total in /metrics")
	}
	code, body := a.get(t, "/debug/sds")
	if code != 200 {
		t.Fatalf("/debug/sds = %d %s", code, body)
	}
	var view struct {
		PeerCheck struct {
			AllowedUIDs []uint32 `json:"allowed_uids"`
			AllowedGIDs []uint32 `json:"allowed_gids"`
			Refused     uint64   `json:"refused"`
			LastRefused struct {
				UID, GID uint32
				PID      int32
			} `json:"last_refused"`
		} `json:"peer_check"`
	}
	if err := json.Unmarshal([]byte(body), &view); err != nil {
		t.Fatal(err)
	}
	pc := view.PeerCheck
	if n, _ := strconv.ParseUint(m[1], 10, 64); pc.Refused < 2 || n != pc.Refused {
		t.Fatalf("refused: metric %s, /debug/sds %d; want the same, at least 2", m[1], pc.Refused)
	}
	if len(pc.AllowedUIDs) != 1 || pc.AllowedUIDs[0] != allowedUID || len(pc.AllowedGIDs) != 1 || pc.AllowedGIDs[0] != allowedGID {
		t.Fatalf("/debug/sds allowlist = %v %v", pc.AllowedUIDs, pc.AllowedGIDs)
	}
	if l := pc.LastRefused; l.UID != other || l.GID != other || l.PID != int32(rawPID) {
		t.Fatalf("/debug/sds last refused = %+v, want uid %d gid %d pid %d\n%s", l, other, other, rawPID, body)
	}
}
