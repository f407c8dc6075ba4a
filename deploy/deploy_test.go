// Package deploy_test checks the deployment files in this directory
// against the agent's own defaults: the Envoy bootstrap is parsed into
// go-control-plane's protos and validated, the Kubernetes manifests are
// decoded strictly into k8s.io/api types, and the Dockerfile is read
// statically. Nothing here runs Docker, Envoy or a cluster.
package deploy_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	// Registers envoy.filters.http.router's typed config so that protojson
	// can resolve the bootstrap's Any fields.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/config"
)

const (
	bootstrapFile  = "envoy/bootstrap.yaml"
	manifestFile   = "kubernetes/sidecar.yaml"
	dockerfile     = "Dockerfile"
	agentContainer = "sdsagent"
	envoyContainer = "envoy"
)

// agentDefault returns the default of the `sdsagent run` flag name.
func agentDefault(t *testing.T, flag string) string {
	t.Helper()
	for _, s := range config.AgentSettings() {
		if s.Flag == flag {
			return s.Default
		}
	}
	t.Fatalf("config.AgentSettings() has no flag --%s", flag)
	return ""
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ---- Envoy bootstrap ----

// validator is implemented by every go-control-plane message
// (protoc-gen-validate).
type validator interface{ ValidateAll() error }

// loadBootstrap parses and validates the bootstrap, then unpacks every Any
// in it and validates each unpacked message too: ValidateAll does not look
// inside Any. It returns the bootstrap and every message in its tree,
// unpacked Anys included, in document order.
func loadBootstrap(t *testing.T, raw []byte) (*bootstrapv3.Bootstrap, []proto.Message) {
	t.Helper()
	js, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		t.Fatalf("%s: YAML: %v", bootstrapFile, err)
	}
	bs := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, bs); err != nil {
		t.Fatalf("%s: not an Envoy v3 Bootstrap: %v", bootstrapFile, err)
	}
	if err := bs.ValidateAll(); err != nil {
		t.Fatalf("%s: Bootstrap.ValidateAll: %v", bootstrapFile, err)
	}
	var all []proto.Message
	walk(t, bs.ProtoReflect(), "bootstrap", func(path string, m proto.Message) {
		all = append(all, m)
		if _, isAny := m.(*anypb.Any); isAny {
			return
		}
		if path == "bootstrap" {
			return // validated above
		}
		// Messages that came out of an Any are validated where they were
		// unpacked; validating every node would only repeat the work.
		if strings.HasSuffix(path, ")") {
			v, ok := m.(validator)
			if !ok {
				t.Errorf("%s: %T has no ValidateAll", path, m)
				return
			}
			if err := v.ValidateAll(); err != nil {
				t.Errorf("%s: %T.ValidateAll: %v", path, m, err)
			}
		}
	})
	return bs, all
}

// walk calls visit for m and every message below it, unpacking Any fields
// (their path ends in "(type name)").
func walk(t *testing.T, m protoreflect.Message, at string, visit func(string, proto.Message)) {
	t.Helper()
	msg := m.Interface()
	visit(at, msg)
	if a, ok := msg.(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			t.Errorf("%s: cannot unpack %s (is its Go package imported?): %v", at, a.GetTypeUrl(), err)
			return
		}
		walk(t, inner.ProtoReflect(), fmt.Sprintf("%s(%s)", at, inner.ProtoReflect().Descriptor().FullName()), visit)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := at + "." + string(fd.Name())
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walk(t, l.Get(i).Message(), fmt.Sprintf("%s[%d]", name, i), visit)
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				walk(t, mv.Message(), fmt.Sprintf("%s[%s]", name, k.String()), visit)
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			walk(t, v.Message(), name, visit)
		}
		return true
	})
}

func collect[T proto.Message](all []proto.Message) []T {
	var out []T
	for _, m := range all {
		if x, ok := m.(T); ok {
			out = append(out, x)
		}
	}
	return out
}

func TestEnvoyBootstrap(t *testing.T) {
	if cache.WorkloadCertName != "default" || cache.RootCertName != "ROOTCA" {
		t.Fatalf("the agent serves %q and %q; Istio's names, which this bootstrap uses, are default and ROOTCA",
			cache.WorkloadCertName, cache.RootCertName)
	}
	bs, all := loadBootstrap(t, readFile(t, bootstrapFile))
	socket := agentDefault(t, "socket")

	clusters := map[string]*clusterv3.Cluster{}
	for _, c := range bs.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = c
	}

	// Every SDS reference names one of the agent's two resources and reads
	// it over gRPC from one cluster.
	sdsClusters := map[string]bool{}
	names := map[string]bool{}
	for _, sc := range collect[*tlsv3.SdsSecretConfig](all) {
		names[sc.GetName()] = true
		src := sc.GetSdsConfig()
		if src.GetResourceApiVersion() != corev3.ApiVersion_V3 {
			t.Errorf("secret %q: resource_api_version %v, want V3", sc.GetName(), src.GetResourceApiVersion())
		}
		api := src.GetApiConfigSource()
		if api.GetApiType() != corev3.ApiConfigSource_GRPC || api.GetTransportApiVersion() != corev3.ApiVersion_V3 {
			t.Errorf("secret %q: api_config_source %v/%v, want GRPC/V3", sc.GetName(), api.GetApiType(), api.GetTransportApiVersion())
		}
		if len(api.GetGrpcServices()) != 1 || api.GetGrpcServices()[0].GetEnvoyGrpc() == nil {
			t.Errorf("secret %q: want exactly one envoy_grpc service, got %v", sc.GetName(), api.GetGrpcServices())
			continue
		}
		sdsClusters[api.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName()] = true
	}
	if want := map[string]bool{cache.WorkloadCertName: true, cache.RootCertName: true}; !mapsEqual(names, want) {
		t.Errorf("SDS secret names %v, want exactly %v", keys(names), keys(want))
	}
	if want := map[string]bool{"sds-grpc": true}; !mapsEqual(sdsClusters, want) {
		t.Errorf("SDS is read from clusters %v, want exactly %v", keys(sdsClusters), keys(want))
	}

	// The SDS cluster: the agent's default socket, HTTP/2, no TLS.
	sds := clusters["sds-grpc"]
	if sds == nil {
		t.Fatal("no static cluster sds-grpc")
	}
	if sds.GetType() != clusterv3.Cluster_STATIC {
		t.Errorf("sds-grpc: type %v, want STATIC", sds.GetType())
	}
	if sds.GetTransportSocket() != nil {
		t.Error("sds-grpc: has a transport socket; the Unix socket is plain")
	}
	var pipes []string
	for _, e := range sds.GetLoadAssignment().GetEndpoints() {
		for _, lb := range e.GetLbEndpoints() {
			pipes = append(pipes, lb.GetEndpoint().GetAddress().GetPipe().GetPath())
		}
	}
	if len(pipes) != 1 || pipes[0] != socket {
		t.Errorf("sds-grpc: pipe paths %q, want exactly the agent's default socket %q", pipes, socket)
	}
	const hpoName = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	anyHPO := sds.GetTypedExtensionProtocolOptions()[hpoName]
	if anyHPO == nil {
		t.Fatalf("sds-grpc: no typed_extension_protocol_options[%s]", hpoName)
	}
	hpo := &upstreamhttpv3.HttpProtocolOptions{}
	if err := anyHPO.UnmarshalTo(hpo); err != nil {
		t.Fatalf("sds-grpc: %s: %v", hpoName, err)
	}
	if hpo.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Errorf("sds-grpc: want explicit_http_config.http2_protocol_options (gRPC needs HTTP/2), got %v", hpo)
	}

	// Both directions take key, chain and roots from the agent only.
	checkCommon := func(what string, c *tlsv3.CommonTlsContext) *tlsv3.CertificateValidationContext {
		t.Helper()
		if len(c.GetTlsCertificates()) != 0 {
			t.Errorf("%s: has inline tls_certificates; the key must come from SDS", what)
		}
		certs := c.GetTlsCertificateSdsSecretConfigs()
		if len(certs) != 1 || certs[0].GetName() != cache.WorkloadCertName {
			t.Errorf("%s: tls_certificate_sds_secret_configs %v, want exactly [%s]", what, certs, cache.WorkloadCertName)
		}
		var root string
		var inline *tlsv3.CertificateValidationContext
		switch v := c.GetValidationContextType().(type) {
		case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
			root = v.ValidationContextSdsSecretConfig.GetName()
		case *tlsv3.CommonTlsContext_CombinedValidationContext:
			root = v.CombinedValidationContext.GetValidationContextSdsSecretConfig().GetName()
			inline = v.CombinedValidationContext.GetDefaultValidationContext()
			if inline.GetTrustedCa() != nil {
				t.Errorf("%s: default_validation_context has trusted_ca; roots must come from %s", what, cache.RootCertName)
			}
		default:
			t.Errorf("%s: validation context %T, want one read over SDS", what, v)
		}
		if root != cache.RootCertName {
			t.Errorf("%s: validation secret %q, want %q", what, root, cache.RootCertName)
		}
		return inline
	}
	downs := collect[*tlsv3.DownstreamTlsContext](all)
	if len(downs) == 0 {
		t.Error("no DownstreamTlsContext (inbound mTLS listener)")
	}
	for i, d := range downs {
		what := fmt.Sprintf("DownstreamTlsContext %d", i)
		if !d.GetRequireClientCertificate().GetValue() {
			t.Errorf("%s: require_client_certificate is not true", what)
		}
		checkCommon(what, d.GetCommonTlsContext())
	}
	ups := collect[*tlsv3.UpstreamTlsContext](all)
	if len(ups) == 0 {
		t.Error("no UpstreamTlsContext (outbound mTLS cluster)")
	}
	for i, u := range ups {
		what := fmt.Sprintf("UpstreamTlsContext %d", i)
		inline := checkCommon(what, u.GetCommonTlsContext())
		// An upstream must be checked for who it is, not only that it
		// chains to the mesh's roots.
		var sans []string
		for _, m := range inline.GetMatchTypedSubjectAltNames() {
			if m.GetSanType() == tlsv3.SubjectAltNameMatcher_URI {
				if e, ok := m.GetMatcher().GetMatchPattern().(*matcherv3.StringMatcher_Exact); ok {
					sans = append(sans, e.Exact)
				}
			}
		}
		if len(sans) == 0 || !strings.HasPrefix(sans[0], "spiffe://") {
			t.Errorf("%s: want an exact URI SAN match on a spiffe:// ID, got %q", what, sans)
		}
	}
	if peer := clusters["peer"]; peer == nil || peer.GetTransportSocket() == nil {
		t.Error("no cluster peer with a TLS transport socket")
	}

	// The inbound listener is an HTTP connection manager routing to the app.
	if hcms := collect[*hcmv3.HttpConnectionManager](all); len(hcms) == 0 {
		t.Error("no HttpConnectionManager")
	}
	for _, ra := range collect[*routev3.RouteAction](all) {
		if c := ra.GetCluster(); clusters[c] == nil {
			t.Errorf("a route targets cluster %q, which is not defined", c)
		}
	}
	app := clusters["app"]
	if got := endpointAddr(app); got != "127.0.0.1:8080" {
		t.Errorf("cluster app: endpoint %q, want 127.0.0.1:8080", got)
	}
	adm := bs.GetAdmin().GetAddress().GetSocketAddress()
	if ip := net.ParseIP(adm.GetAddress()); ip == nil || !ip.IsLoopback() || adm.GetPortValue() != 15000 {
		t.Errorf("admin on %s:%d, want 127.0.0.1:15000 (loopback only)", adm.GetAddress(), adm.GetPortValue())
	}
}

func endpointAddr(c *clusterv3.Cluster) string {
	for _, e := range c.GetLoadAssignment().GetEndpoints() {
		for _, lb := range e.GetLbEndpoints() {
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
		}
	}
	return ""
}

// Typos in the bootstrap must fail the test: an unknown field, or an Any
// whose type is not linked in, is an error rather than skipped.
func TestBootstrapRejectsUnknownFieldsAndTypes(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field": "static_resources:\n  clusterz: []\n",
		"unknown type": "static_resources:\n  clusters:\n  - name: x\n    typed_extension_protocol_options:\n" +
			"      x:\n        \"@type\": type.googleapis.com/envoy.not.a.Type\n",
	} {
		js, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if err := protojson.Unmarshal(js, &bootstrapv3.Bootstrap{}); err == nil {
			t.Errorf("%s: protojson accepted %q", name, doc)
		}
	}
}

// ---- Kubernetes manifests ----

type manifests struct {
	deployments     []*appsv1.Deployment
	serviceAccounts []*corev1.ServiceAccount
	configMaps      map[string]*corev1.ConfigMap
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// loadManifests decodes every document strictly: an unknown or duplicated
// field, or a kind this test does not know, is an error.
func loadManifests(t *testing.T, raw []byte) manifests {
	t.Helper()
	ms := manifests{configMaps: map[string]*corev1.ConfigMap{}}
	for i, doc := range docSeparator.Split(string(raw), -1) {
		js, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			t.Fatalf("%s document %d: %v", manifestFile, i, err)
		}
		if string(bytes.TrimSpace(js)) == "null" {
			continue // comments only
		}
		var tm struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("%s document %d: %v", manifestFile, i, err)
		}
		var obj any
		switch gvk := tm.APIVersion + "/" + tm.Kind; gvk {
		case "apps/v1/Deployment":
			d := &appsv1.Deployment{}
			ms.deployments = append(ms.deployments, d)
			obj = d
		case "v1/ServiceAccount":
			sa := &corev1.ServiceAccount{}
			ms.serviceAccounts = append(ms.serviceAccounts, sa)
			obj = sa
		case "v1/ConfigMap":
			obj = &corev1.ConfigMap{}
		default:
			t.Fatalf("%s document %d: unexpected %s", manifestFile, i, gvk)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s document %d (%s): %v", manifestFile, i, tm.Kind, err)
		}
		if cm, ok := obj.(*corev1.ConfigMap); ok {
			ms.configMaps[cm.Name] = cm
		}
	}
	return ms
}

func TestStrictDecodingRejectsTypos(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field":   "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replica: 1\n",
		"duplicate field": "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: 1\n  replicas: 2\n",
	} {
		if err := yaml.UnmarshalStrict([]byte(doc), &appsv1.Deployment{}); err == nil {
			t.Errorf("%s: UnmarshalStrict accepted %q", name, doc)
		}
	}
}

func container(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

func volume(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Volume {
	t.Helper()
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	t.Fatalf("no volume %q", name)
	return nil
}

// mountOf returns the mount of c whose mountPath is dir.
func mountOf(t *testing.T, c *corev1.Container, dir string) corev1.VolumeMount {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if path.Clean(m.MountPath) == path.Clean(dir) {
			if m.SubPath != "" || m.SubPathExpr != "" {
				// subPath mounts never see updates: a rotated token or
				// root, or a re-created socket.
				t.Errorf("container %s: mount %s uses subPath", c.Name, dir)
			}
			return m
		}
	}
	t.Fatalf("container %s: nothing mounted at %s", c.Name, dir)
	return corev1.VolumeMount{}
}

// configMapFile returns the ConfigMap key a configMap volume shows as file.
func configMapFile(src *corev1.ConfigMapVolumeSource, file string) (string, bool) {
	if len(src.Items) == 0 {
		return file, true
	}
	for _, it := range src.Items {
		if path.Clean(it.Path) == file {
			return it.Key, true
		}
	}
	return "", false
}

// agentConfig parses the agent container's command line and environment
// with the agent's own parser, as the container would at start.
func agentConfig(t *testing.T, spec *corev1.PodSpec, c *corev1.Container) config.Agent {
	t.Helper()
	known := map[string]bool{}
	for _, s := range config.AgentSettings() {
		known[s.Env] = true
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if !known[e.Name] {
			t.Errorf("container %s: env %s is not a setting of `sdsagent run`", c.Name, e.Name)
		}
		if _, dup := env[e.Name]; dup {
			t.Errorf("container %s: env %s set twice", c.Name, e.Name)
		}
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			env[e.Name] = "example-namespace"
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.serviceAccountName":
			env[e.Name] = spec.ServiceAccountName
		default:
			t.Fatalf("container %s: env %s: unexpected valueFrom %v", c.Name, e.Name, e.ValueFrom)
		}
	}
	if len(c.Command) != 0 {
		t.Errorf("container %s: command %q overrides the image's entrypoint /sdsagent", c.Name, c.Command)
	}
	args := c.Args
	if len(args) == 0 {
		args = []string{"run"} // the image's CMD
	}
	if args[0] != "run" {
		t.Fatalf("container %s: args %q, want `run ...`", c.Name, args)
	}
	var out bytes.Buffer
	cfg, err := config.ParseAgent(args[1:], func(k string) string { return env[k] }, &out)
	if err != nil {
		t.Fatalf("container %s: the agent would refuse to start: %v %s", c.Name, err, out.String())
	}
	for _, want := range []struct{ name, fieldPath string }{
		{"POD_NAMESPACE", "metadata.namespace"},
		{"SERVICE_ACCOUNT", "spec.serviceAccountName"},
	} {
		ok := slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == want.name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil &&
				e.ValueFrom.FieldRef.FieldPath == want.fieldPath
		})
		if !ok {
			t.Errorf("container %s: env %s must come from fieldRef %s", c.Name, want.name, want.fieldPath)
		}
	}
	for _, name := range []string{"CA_ADDR", "TRUST_DOMAIN", "ISTIO_META_CLUSTER_ID", "SDSAGENT_HTTP_ADDR"} {
		if _, ok := env[name]; !ok {
			t.Errorf("container %s: env %s is not set", c.Name, name)
		}
	}
	return cfg
}

func probePort(t *testing.T, c *corev1.Container, port intstr.IntOrString) int {
	t.Helper()
	if port.Type == intstr.Int {
		return port.IntValue()
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort)
		}
	}
	t.Errorf("container %s: probe port %q is not a named port", c.Name, port.StrVal)
	return -1
}

func TestKubernetesSidecar(t *testing.T) {
	ms := loadManifests(t, readFile(t, manifestFile))
	if len(ms.deployments) != 1 || len(ms.serviceAccounts) != 1 {
		t.Fatalf("want one Deployment and one ServiceAccount, got %d and %d", len(ms.deployments), len(ms.serviceAccounts))
	}
	dep := ms.deployments[0]
	spec := &dep.Spec.Template.Spec
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 {
		t.Errorf("replicas %v, want 1", dep.Spec.Replicas)
	}
	if sa := ms.serviceAccounts[0].Name; spec.ServiceAccountName != sa {
		t.Errorf("pod runs as service account %q, the manifest defines %q", spec.ServiceAccountName, sa)
	}
	agent := container(t, spec, agentContainer)
	envoy := container(t, spec, envoyContainer)
	cfg := agentConfig(t, spec, agent)

	// The manifest relies on the agent's (Istio's) default paths, which the
	// bootstrap uses too.
	for _, d := range []struct{ flag, got string }{
		{"socket", cfg.Socket},
		{"token-file", cfg.TokenFile},
		{"ca-root-cert", cfg.CARootCert},
	} {
		if want := agentDefault(t, d.flag); d.got != want {
			t.Errorf("--%s is %q in the manifest, want the default %q", d.flag, d.got, want)
		}
	}

	t.Run("socket", func(t *testing.T) {
		dir := path.Dir(cfg.Socket)
		am, em := mountOf(t, agent, dir), mountOf(t, envoy, dir)
		if am.Name != em.Name {
			t.Errorf("socket dir %s: agent mounts volume %q, envoy %q", dir, am.Name, em.Name)
		}
		if am.ReadOnly {
			t.Errorf("socket dir %s is read-only for the agent", dir)
		}
		if v := volume(t, spec, am.Name); v.EmptyDir == nil {
			t.Errorf("volume %s: want an emptyDir, got %+v", v.Name, v.VolumeSource)
		}
	})

	t.Run("token", func(t *testing.T) {
		m := mountOf(t, agent, path.Dir(cfg.TokenFile))
		v := volume(t, spec, m.Name)
		if v.Projected == nil {
			t.Fatalf("volume %s: want a projected volume", v.Name)
		}
		found := false
		for _, src := range v.Projected.Sources {
			tok := src.ServiceAccountToken
			if tok == nil || path.Join(m.MountPath, tok.Path) != cfg.TokenFile {
				continue
			}
			found = true
			if tok.Audience != "istio-ca" {
				t.Errorf("token audience %q, want istio-ca", tok.Audience)
			}
			if tok.ExpirationSeconds == nil || *tok.ExpirationSeconds != 3600 {
				t.Errorf("token expirationSeconds %v, want 3600", tok.ExpirationSeconds)
			}
		}
		if !found {
			t.Errorf("volume %s: no serviceAccountToken at %s", v.Name, cfg.TokenFile)
		}
	})

	t.Run("root cert", func(t *testing.T) {
		m := mountOf(t, agent, path.Dir(cfg.CARootCert))
		v := volume(t, spec, m.Name)
		if v.ConfigMap == nil || v.ConfigMap.Name != "istio-ca-root-cert" {
			t.Fatalf("volume %s: want the istio-ca-root-cert ConfigMap, got %+v", v.Name, v.VolumeSource)
		}
		if key, ok := configMapFile(v.ConfigMap, path.Base(cfg.CARootCert)); !ok || key != "root-cert.pem" {
			t.Errorf("%s: ConfigMap key %q, want root-cert.pem", cfg.CARootCert, key)
		}
	})

	t.Run("probes", func(t *testing.T) {
		host, port, err := net.SplitHostPort(cfg.HTTPAddr)
		if err != nil {
			t.Fatalf("SDSAGENT_HTTP_ADDR %q: %v", cfg.HTTPAddr, err)
		}
		if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
			t.Errorf("SDSAGENT_HTTP_ADDR %q: the kubelet probes from outside loopback; listen on 0.0.0.0", cfg.HTTPAddr)
		}
		for _, p := range []struct {
			kind  string
			probe *corev1.Probe
			path  string
		}{{"liveness", agent.LivenessProbe, "/healthz"}, {"readiness", agent.ReadinessProbe, "/ready"}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("%s probe: want an httpGet probe", p.kind)
				continue
			}
			g := p.probe.HTTPGet
			if g.Path != p.path {
				t.Errorf("%s probe: path %q, want %q", p.kind, g.Path, p.path)
			}
			if got := probePort(t, agent, g.Port); strconv.Itoa(got) != port {
				t.Errorf("%s probe: port %d, want %s (SDSAGENT_HTTP_ADDR)", p.kind, got, port)
			}
		}
	})

	t.Run("security", func(t *testing.T) {
		psc := spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
			t.Fatal("pod securityContext.runAsNonRoot is not true")
		}
		if psc.FSGroup == nil || *psc.FSGroup == 0 {
			t.Error("pod securityContext.fsGroup is not set: Envoy could not use the agent's socket")
		}
		uid := map[string]int64{}
		for _, c := range spec.Containers {
			sc := c.SecurityContext
			if sc == nil {
				t.Errorf("container %s: no securityContext", c.Name)
				continue
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("container %s: readOnlyRootFilesystem is not true", c.Name)
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("container %s: allowPrivilegeEscalation is not false", c.Name)
			}
			if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) != 0 {
				t.Errorf("container %s: capabilities %+v, want drop [ALL] and no add", c.Name, sc.Capabilities)
			}
			u := sc.RunAsUser
			if u == nil {
				u = psc.RunAsUser
			}
			// runAsNonRoot needs a numeric non-root UID: the Envoy image
			// itself starts as root.
			if u == nil || *u == 0 {
				t.Errorf("container %s: no non-root runAsUser", c.Name)
				continue
			}
			uid[c.Name] = *u
		}
		if uid[agentContainer] != uid[envoyContainer] && cfg.SocketMode&0o060 != 0o060 {
			t.Errorf("Envoy (UID %d) is not the agent (UID %d) and the socket mode %#o gives the group no read/write",
				uid[envoyContainer], uid[agentContainer], cfg.SocketMode)
		}
	})

	t.Run("resources", func(t *testing.T) {
		r := agent.Resources
		for _, q := range []struct {
			what string
			ok   bool
		}{
			{"requests.cpu", !r.Requests.Cpu().IsZero()},
			{"requests.memory", !r.Requests.Memory().IsZero()},
			{"limits.memory", !r.Limits.Memory().IsZero()},
		} {
			if !q.ok {
				t.Errorf("container %s: resources.%s is not set", agent.Name, q.what)
			}
		}
		if r.Requests.Memory().Cmp(*r.Limits.Memory()) > 0 {
			t.Errorf("container %s: memory request %s above limit %s", agent.Name, r.Requests.Memory(), r.Limits.Memory())
		}
	})

	t.Run("envoy bootstrap", func(t *testing.T) {
		cmdline := append(slices.Clone(envoy.Command), envoy.Args...)
		var conf string
		for i, a := range cmdline {
			switch {
			case (a == "-c" || a == "--config-path") && i+1 < len(cmdline):
				conf = cmdline[i+1]
			case strings.HasPrefix(a, "--config-path="):
				conf = strings.TrimPrefix(a, "--config-path=")
			}
		}
		if conf == "" {
			t.Fatalf("envoy command line %q has no --config-path", cmdline)
		}
		m := mountOf(t, envoy, path.Dir(conf))
		v := volume(t, spec, m.Name)
		if v.ConfigMap == nil {
			t.Fatalf("volume %s: want a ConfigMap", v.Name)
		}
		key, ok := configMapFile(v.ConfigMap, path.Base(conf))
		if !ok {
			t.Fatalf("ConfigMap volume %s does not provide %s", v.Name, conf)
		}
		cm := ms.configMaps[v.ConfigMap.Name]
		if cm == nil {
			t.Fatalf("ConfigMap %s is not in %s", v.ConfigMap.Name, manifestFile)
		}
		got, want := cm.Data[key], string(readFile(t, bootstrapFile))
		if got != want {
			t.Errorf("ConfigMap %s key %s differs from %s%s", cm.Name, key, bootstrapFile, firstDiff(got, want))
		}
	})
}

// firstDiff describes the first line where got and want differ.
func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl || i >= len(g) || i >= len(w) {
			return fmt.Sprintf(" at line %d:\n  ConfigMap: %q\n  file:      %q", i+1, gl, wl)
		}
	}
	return ""
}

// ---- Dockerfile ----

type instruction struct {
	cmd  string // upper case
	args string
}

// parseDockerfile returns the instructions of each stage, joining
// continuation lines and dropping comments.
func parseDockerfile(r io.Reader) ([][]instruction, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var stages [][]instruction
	var cur strings.Builder
	flush := func() error {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return nil
		}
		cmd, args, _ := strings.Cut(line, " ")
		in := instruction{strings.ToUpper(cmd), strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			if in.cmd == "ARG" {
				return nil // global ARG before the first FROM
			}
			return fmt.Errorf("%s before the first FROM", in.cmd)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	return stages, flush()
}

// fromImage returns the image of a FROM instruction, without flags and
// stage name.
func fromImage(args string) string {
	for _, f := range strings.Fields(args) {
		if !strings.HasPrefix(f, "--") {
			return f
		}
	}
	return ""
}

func TestDockerfile(t *testing.T) {
	stages, err := parseDockerfile(bytes.NewReader(readFile(t, dockerfile)))
	if err != nil {
		t.Fatalf("%s: %v", dockerfile, err)
	}
	if len(stages) < 2 {
		t.Fatalf("%s: %d stages, want a build stage and a final stage", dockerfile, len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	if img := fromImage(build[0].args); !strings.HasPrefix(img, "golang:1.26") {
		t.Errorf("build stage FROM %s, want golang:1.26", img)
	}
	// go.mod/go.sum, then go mod download, then the sources: editing a
	// source file must not invalidate the module layer.
	order := map[string]int{}
	for i, in := range build {
		switch {
		case in.cmd == "COPY" && strings.Contains(in.args, "go.mod") && strings.Contains(in.args, "go.sum"):
			order["copy go.mod"] = i
		case in.cmd == "RUN" && strings.Contains(in.args, "go mod download"):
			order["go mod download"] = i
		case in.cmd == "COPY" && strings.HasPrefix(in.args, ". "):
			order["copy sources"] = i
		case in.cmd == "RUN" && strings.Contains(in.args, "go build"):
			order["go build"] = i
			for _, want := range []string{"CGO_ENABLED=0", "-tags grpcnotrace", "-trimpath", "-X main.version=", "./cmd/sdsagent"} {
				if !strings.Contains(in.args, want) {
					t.Errorf("go build step lacks %q: %s", want, in.args)
				}
			}
		}
	}
	steps := []string{"copy go.mod", "go mod download", "copy sources", "go build"}
	for i, s := range steps {
		if _, ok := order[s]; !ok {
			t.Errorf("build stage has no %q step", s)
		} else if i > 0 && order[s] < order[steps[i-1]] {
			t.Errorf("build stage: %q comes before %q", s, steps[i-1])
		}
	}

	img := fromImage(final[0].args)
	if img != "scratch" && !strings.HasPrefix(img, "gcr.io/distroless/static") {
		t.Errorf("final stage FROM %s, want gcr.io/distroless/static* or scratch", img)
	}
	var user, entrypoint, cmd string
	for _, in := range final {
		switch in.cmd {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		case "CMD":
			cmd = in.args
		case "RUN":
			t.Errorf("final stage runs %q: it has no shell", in.args)
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("final stage USER %q, want a numeric non-root UID (Kubernetes' runAsNonRoot checks it)", user)
	}
	if entrypoint != `["/sdsagent"]` {
		t.Errorf(`ENTRYPOINT %s, want ["/sdsagent"]`, entrypoint)
	}
	if cmd != `["run"]` {
		t.Errorf(`CMD %s, want ["run"]`, cmd)
	}
}

func mapsEqual(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
