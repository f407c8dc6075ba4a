package sds_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// fuzzWait bounds every exchange of one fuzz input; the machine may be
// loaded, so it is generous. An exchange that takes longer means the
// server hangs on that input.
const fuzzWait = 20 * time.Second

// fuzzSource serves a cache.Store and checks names with the agent's own
// rules (cache.Manager.CheckName). It takes no demand, so file-backed
// names never make the fuzzed server read files.
type fuzzSource struct {
	*cache.Store
	names *cache.Manager
}

func (s fuzzSource) CheckName(name string) error { return s.names.CheckName(name) }

// keyWatch is a log sink that remembers whether private key material was
// ever written to it.
type keyWatch struct {
	needles [][]byte
	leaked  atomic.Bool
}

func (w *keyWatch) Write(p []byte) (int, error) {
	for _, n := range w.needles {
		if strings.Contains(string(p), string(n)) {
			w.leaked.Store(true)
		}
	}
	return len(p), nil
}

func (w *keyWatch) Sync() error { return nil }

// fuzzServer is one real SDS server on a Unix socket, shared by every
// input of a fuzz target, with "default" and "ROOTCA" published and a
// client connection.
type fuzzServer struct {
	conn *grpc.ClientConn
	logs *keyWatch
}

func startFuzzServer(f *testing.F) *fuzzServer {
	f.Helper()
	dir, err := os.MkdirTemp("", "fz")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = os.RemoveAll(dir) })
	root := testpki.NewRoot(f, "fuzz root")
	leaf := root.NewIntermediate(f, "fuzz intermediate").IssueLeaf(f, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/a/sa/b"}})
	store := cache.NewStore(clock.Real())
	store.Update([]*cache.Secret{
		{Name: cache.WorkloadCertName, Kind: cache.TLSCertificate, CertChainPEM: leaf.ChainPEM, PrivateKeyPEM: leaf.KeyPEM,
			Certs: []*x509.Certificate{leaf.Cert}, Source: "fuzz"},
		{Name: cache.RootCertName, Kind: cache.ValidationContext, TrustedCAPEM: root.CertPEM,
			Certs: []*x509.Certificate{root.Cert}, Source: "fuzz"},
	}, nil)
	names, err := cache.New(cache.Config{MountedCertDir: filepath.Join(dir, "none")})
	if err != nil {
		f.Fatal(err)
	}
	logs := &keyWatch{needles: [][]byte{leaf.KeyPEM, []byte(base64.StdEncoding.EncodeToString(leaf.KeyPEM))}}
	for _, line := range strings.Split(string(leaf.KeyPEM), "\n") {
		if len(line) >= 16 && !strings.HasPrefix(line, "-----") {
			logs.needles = append(logs.needles, []byte(line))
		}
	}
	// Debug level, so that every request log line is encoded too.
	logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), logs, zapcore.DebugLevel))
	socket := filepath.Join(dir, "s.sock")
	srv, err := sds.New(sds.Config{SocketPath: socket, Source: fuzzSource{store, names}, Logger: logger})
	if err != nil {
		f.Fatal(err)
	}
	lis, err := sds.Listen(socket, sds.DefaultSocketMode)
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	f.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				f.Errorf("Serve: %v", err)
			}
		case <-time.After(fuzzWait):
			f.Error("Serve did not return after cancel")
		}
	})
	dctx, dcancel := context.WithTimeout(context.Background(), fuzzWait)
	defer dcancel()
	conn, err := sdstest.Dial(dctx, socket)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = conn.Close() })
	return &fuzzServer{conn: conn, logs: logs}
}

// checkAlive fails unless the server still answers a well-formed fetch
// with a valid "default", and no key material reached the logs.
func (fs *fuzzServer) checkAlive(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fuzzWait)
	defer cancel()
	resp, err := sdstest.Fetch(ctx, fs.conn, []string{cache.WorkloadCertName})
	if err != nil {
		t.Fatalf("server no longer answers a well-formed fetch: %v", err)
	}
	if !slices.Equal(resp.Names(), []string{cache.WorkloadCertName}) {
		t.Fatalf("well-formed fetch answered with %v", resp.Names())
	}
	if fs.logs.leaked.Load() {
		t.Fatal("private key material written to the logs")
	}
}

// checkCode fails unless err ends a call the way client input may: no
// error, or a status a client can act on; never Unknown or Internal.
func checkCode(t *testing.T, what string, err error) codes.Code {
	t.Helper()
	if err == nil || errors.Is(err, io.EOF) {
		return codes.OK
	}
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("%s: error %v is not a gRPC status", what, err)
	}
	switch st.Code() {
	case codes.InvalidArgument, codes.NotFound, codes.ResourceExhausted, codes.FailedPrecondition, codes.OutOfRange:
		return st.Code()
	}
	t.Fatalf("%s: client input ended with %s: %s", what, st.Code(), st.Message())
	return st.Code()
}

// checkSecrets fails unless every resource is a valid Secret whose name
// the client asked for.
func checkSecrets(t *testing.T, what string, typeURL string, resources []*anypb.Any, names []string, allowed map[string]bool) {
	t.Helper()
	if len(resources) > 0 && typeURL != resource.SecretType {
		t.Fatalf("%s: response type url %q", what, typeURL)
	}
	for i, a := range resources {
		sec := &tlsv3.Secret{}
		if a.GetTypeUrl() != resource.SecretType {
			t.Fatalf("%s: resource %d has type url %q", what, i, a.GetTypeUrl())
		}
		if err := a.UnmarshalTo(sec); err != nil {
			t.Fatalf("%s: resource %d: %v", what, i, err)
		}
		if err := sec.ValidateAll(); err != nil {
			t.Fatalf("%s: invalid secret %q: %v", what, sec.GetName(), err)
		}
		if !allowed[sec.GetName()] {
			t.Fatalf("%s: served %q, which the client did not ask for", what, sec.GetName())
		}
		if names != nil && names[i] != sec.GetName() {
			t.Fatalf("%s: delta resource %q holds secret %q", what, names[i], sec.GetName())
		}
	}
}

// splitNames splits a fuzz string into resource names, one per line.
func splitNames(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(valid(s), "\n")
}

// valid replaces invalid UTF-8, which a Go client cannot put in a proto
// string field (marshalling fails on the client side).
func valid(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

func fuzzNode(id string) *corev3.Node {
	if id == "-" {
		return nil
	}
	return &corev3.Node{Id: id, Cluster: sdstest.DefaultNodeCluster}
}

func fuzzDetail(code int32, msg string) *rpcstatus.Status {
	if code == 0 && msg == "" {
		return nil
	}
	return &rpcstatus.Status{Code: code, Message: msg}
}

// wantRejected reports whether the protocol says the first request of a
// stream (or a fetch) must be refused with InvalidArgument: no node.id,
// or a type other than Secret.
func wantRejected(nodeID, typeURL string) bool {
	return nodeID == "" || nodeID == "-" || (typeURL != "" && typeURL != resource.SecretType)
}

// FuzzStreamSecrets sends state-of-the-world requests built from the input
// on a real stream: the first with the node, then up to two more without
// it (re-requests, ACKs or NACKs with the given nonce), then closes its
// side. Whatever it sends, the server answers only with names asked for,
// ends the stream with OK or a client-error status, refuses a request
// without node.id or of another type, and still serves a following
// well-formed fetch.
func FuzzStreamSecrets(f *testing.F) {
	fs := startFuzzServer(f)
	const secret = resource.SecretType
	f.Add(secret, "default", "", "", sdstest.DefaultNodeID, int32(0), "", uint8(1))
	f.Add(secret, "default\nROOTCA", "", "", sdstest.DefaultNodeID, int32(0), "", uint8(3))
	f.Add(secret, "ROOTCA\nROOTCA\ndefault\n", "v1", "1", "n", int32(3), "rejected: bad key", uint8(2))
	f.Add("", "default", "", "", "n", int32(0), "", uint8(1))
	f.Add(secret, "", "", "", "n", int32(0), "", uint8(1))
	f.Add(secret, "nope\n\x00\nfile-root:relative\nfile-cert:/a~b~c", "", "", "n", int32(0), "", uint8(1))
	f.Add(secret, "file-root:/nonexistent/ca.pem\nfile-root:system\nALL", "", "", "n", int32(0), "", uint8(2))
	f.Add(secret, "default", "", "", "", int32(0), "", uint8(1))
	f.Add(secret, "default", "", "", "-", int32(0), "", uint8(1))
	f.Add(resource.ClusterType, "default", "", "", "n", int32(0), "", uint8(1))
	f.Add(resource.AnyType, "default", "", "", "n", int32(0), "", uint8(1))
	f.Add(secret, "default", "sds-0000000000-1", "stale", "n", int32(-1), "\xff\xfe", uint8(3))
	f.Add(secret, strings.Repeat("x", 70000), "", "", "n", int32(0), "", uint8(1))
	f.Fuzz(func(t *testing.T, typeURL, namesIn, version, nonce, nodeID string, code int32, msg string, count uint8) {
		typeURL, version, nonce, nodeID, msg = valid(typeURL), valid(version), valid(nonce), valid(nodeID), valid(msg)
		names := splitNames(namesIn)
		ctx, cancel := context.WithTimeout(context.Background(), fuzzWait)
		defer cancel()
		st, err := secretv3.NewSecretDiscoveryServiceClient(fs.conn).StreamSecrets(ctx)
		if err != nil {
			t.Fatalf("open stream: %v", err)
		}
		allowed := map[string]bool{}
		for _, n := range names {
			allowed[n] = true
		}
		sendErr := error(nil)
		for i := range 1 + int(count%3) {
			req := &discoveryv3.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names}
			if i == 0 {
				req.Node = fuzzNode(nodeID)
			} else {
				req.VersionInfo, req.ResponseNonce, req.ErrorDetail = version, nonce, fuzzDetail(code, msg)
			}
			if sendErr = st.Send(req); sendErr != nil {
				break // the server ended the stream; Recv tells why
			}
		}
		drainFuzzStream(t, ctx, "stream", st, sendErr, nodeID, typeURL, func(resp *discoveryv3.DiscoveryResponse) {
			checkSecrets(t, "stream", resp.GetTypeUrl(), resp.GetResources(), nil, allowed)
		})
		fs.checkAlive(t)
	})
}

// FuzzDeltaSecrets does for DeltaSecrets what FuzzStreamSecrets does for
// state of the world: subscribe and unsubscribe lists, initial resource
// versions, nonce and error detail come from the input. A response only
// carries names the stream subscribed to, and removes only names it
// subscribed to or dropped.
func FuzzDeltaSecrets(f *testing.F) {
	fs := startFuzzServer(f)
	const secret = resource.SecretType
	f.Add(secret, "default", "", "", "", sdstest.DefaultNodeID, int32(0), "", uint8(1))
	f.Add(secret, "default\nROOTCA", "ROOTCA", "", "", "n", int32(0), "", uint8(3))
	f.Add(secret, "default", "", "sds-0000000000-1", "", "n", int32(0), "", uint8(1))
	f.Add(secret, "default", "default", "", "1", "n", int32(13), "nack", uint8(2))
	f.Add("", "ROOTCA", "", "", "", "n", int32(0), "", uint8(1))
	f.Add(secret, "", "", "", "", "n", int32(0), "", uint8(1))
	f.Add(secret, "*", "", "", "", "n", int32(0), "", uint8(1))
	f.Add(secret, "nope\nfile-cert:/a~/b\nfile-root:\n\xc3", "nope", "", "", "n", int32(0), "", uint8(2))
	f.Add(secret, "default", "", "", "", "", int32(0), "", uint8(1))
	f.Add(resource.ListenerType, "default", "", "", "", "n", int32(0), "", uint8(1))
	f.Fuzz(func(t *testing.T, typeURL, subIn, unsubIn, initialVersion, nonce, nodeID string, code int32, msg string, count uint8) {
		typeURL, initialVersion, nonce, nodeID, msg = valid(typeURL), valid(initialVersion), valid(nonce), valid(nodeID), valid(msg)
		sub, unsub := splitNames(subIn), splitNames(unsubIn)
		ctx, cancel := context.WithTimeout(context.Background(), fuzzWait)
		defer cancel()
		st, err := secretv3.NewSecretDiscoveryServiceClient(fs.conn).DeltaSecrets(ctx)
		if err != nil {
			t.Fatalf("open delta stream: %v", err)
		}
		subscribed, touched := map[string]bool{}, map[string]bool{}
		sendErr := error(nil)
		for i := range 1 + int(count%3) {
			req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL}
			switch i {
			case 0:
				req.Node = fuzzNode(nodeID)
				req.ResourceNamesSubscribe = sub
				if initialVersion != "" {
					req.InitialResourceVersions = map[string]string{}
					for _, n := range sub {
						req.InitialResourceVersions[n] = initialVersion
					}
				}
			case 1:
				req.ResourceNamesUnsubscribe = unsub
				req.ResponseNonce, req.ErrorDetail = nonce, fuzzDetail(code, msg)
			default:
				req.ResourceNamesSubscribe = unsub
			}
			for _, n := range req.ResourceNamesSubscribe {
				subscribed[n], touched[n] = true, true
			}
			for _, n := range req.ResourceNamesUnsubscribe {
				touched[n] = true
			}
			if sendErr = st.Send(req); sendErr != nil {
				break
			}
		}
		drainFuzzStream(t, ctx, "delta stream", st, sendErr, nodeID, typeURL, func(resp *discoveryv3.DeltaDiscoveryResponse) {
			var anys []*anypb.Any
			var names []string
			for _, r := range resp.GetResources() {
				anys = append(anys, r.GetResource())
				names = append(names, r.GetName())
			}
			checkSecrets(t, "delta", resp.GetTypeUrl(), anys, names, subscribed)
			for _, n := range resp.GetRemovedResources() {
				if !touched[n] {
					t.Fatalf("delta: removed %q, which the client never named", n)
				}
			}
		})
		fs.checkAlive(t)
	})
}

// drainFuzzStream closes the client's side of st unless sending failed,
// then reads until the server ends the stream: an end that is not a
// client-error status, an answer to a request the server must refuse, or
// no end within fuzzWait fails t; check sees each answer.
func drainFuzzStream[Resp any](t *testing.T, ctx context.Context, kind string, st interface {
	CloseSend() error
	Recv() (Resp, error)
}, sendErr error, nodeID, typeURL string, check func(Resp)) {
	t.Helper()
	if sendErr == nil {
		_ = st.CloseSend()
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				t.Fatalf("%s did not end within %s after the client closed its side", kind, fuzzWait)
			}
			c := checkCode(t, kind, err)
			if wantRejected(nodeID, typeURL) && c != codes.InvalidArgument {
				t.Fatalf("%s with node id %q and type url %q ended with %v, want InvalidArgument", kind, nodeID, typeURL, err)
			}
			return
		}
		if wantRejected(nodeID, typeURL) {
			t.Fatalf("%s with node id %q and type url %q was answered", kind, nodeID, typeURL)
		}
		check(resp)
	}
}

// FuzzFetchSecrets calls FetchSecrets with a request built from the input.
// The answer carries only names asked for, errors are client-error
// statuses, a fetch without node.id or of another type is refused with
// InvalidArgument, and the server keeps answering. With current set, the
// fetch carries the version the server is at.
func FuzzFetchSecrets(f *testing.F) {
	fs := startFuzzServer(f)
	const secret = resource.SecretType
	f.Add(secret, "default", "", false, sdstest.DefaultNodeID, "", int32(0), "")
	f.Add(secret, "default\nROOTCA\ndefault", "", false, "n", "", int32(0), "")
	f.Add(secret, "ROOTCA", "sds-0000000000-1", false, "n", "nonce", int32(0), "")
	f.Add(secret, "", "", false, "n", "", int32(0), "")
	f.Add(secret, "unknown\nfile-root:system\nfile-cert:x", "", false, "n", "", int32(0), "")
	f.Add(secret, "default", "", false, "", "", int32(0), "")
	f.Add(secret, "default", "", false, "-", "", int32(0), "")
	f.Add("", "default", "", false, "n", "", int32(0), "")
	f.Add(secret, "default", "", false, "n", "", int32(3), "error detail on a fetch")
	f.Add(secret, strings.Repeat("\xff", 4097), "", false, "n", "", int32(0), "")
	f.Fuzz(func(t *testing.T, typeURL, namesIn, version string, current bool, nodeID, nonce string, code int32, msg string) {
		typeURL, version, nodeID, nonce, msg = valid(typeURL), valid(version), valid(nodeID), valid(nonce), valid(msg)
		names := splitNames(namesIn)
		ctx, cancel := context.WithTimeout(context.Background(), fuzzWait)
		defer cancel()
		if current {
			resp, err := sdstest.Fetch(ctx, fs.conn, []string{cache.WorkloadCertName, cache.RootCertName})
			if err != nil {
				t.Fatalf("fetch the current version: %v", err)
			}
			version = resp.Version
		}
		req := &discoveryv3.DiscoveryRequest{
			VersionInfo: version, Node: fuzzNode(nodeID), ResourceNames: names, TypeUrl: typeURL,
			ResponseNonce: nonce, ErrorDetail: fuzzDetail(code, msg),
		}
		resp, err := secretv3.NewSecretDiscoveryServiceClient(fs.conn).FetchSecrets(ctx, req)
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("fetch not answered within %s", fuzzWait)
		}
		c := checkCode(t, "fetch", err)
		if wantRejected(nodeID, typeURL) && c != codes.InvalidArgument {
			t.Fatalf("fetch with node id %q and type url %q: %v, want InvalidArgument", nodeID, typeURL, err)
		}
		if err == nil {
			allowed := map[string]bool{}
			for _, n := range names {
				allowed[n] = true
			}
			checkSecrets(t, "fetch", resp.GetTypeUrl(), resp.GetResources(), nil, allowed)
		}
		fs.checkAlive(t)
	})
}
