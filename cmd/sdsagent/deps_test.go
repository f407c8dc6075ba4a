package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestAgentLinksOnlySDSTypes: the agent binary links none of Envoy's
// admin, bootstrap, cluster, listener or route protos, nor
// go-control-plane's server and cache. Package initialisation registers
// the descriptor of every proto a binary links, and these made up a third
// of the agent's start before main (issue 13); the debug views write the
// admin JSON with their own types instead. Nor does it link istio.io/api,
// whose generated code pulls the deprecated github.com/golang/protobuf and
// protodesc: package caapi encodes the CA's two messages itself.
func TestAgentLinksOnlySDSTypes(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3") {
		t.Fatalf("go list -deps does not list the tls/v3 protos the agent serves; output:\n%s", out)
	}
	for _, banned := range []string{
		"github.com/envoyproxy/go-control-plane/envoy/admin/v3",
		"github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3",
		"github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3",
		"github.com/envoyproxy/go-control-plane/envoy/config/listener/v3",
		"github.com/envoyproxy/go-control-plane/envoy/config/route/v3",
		"github.com/envoyproxy/go-control-plane/pkg/cache/v3",
		"github.com/envoyproxy/go-control-plane/pkg/server/v3",
		"cel.dev/expr",
		"istio.io/api/security/v1alpha1",
		"github.com/golang/protobuf/proto",
		"google.golang.org/protobuf/reflect/protodesc",
	} {
		if slices.Contains(deps, banned) {
			t.Errorf("cmd/sdsagent links %s", banned)
		}
	}
}
