package metrics_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sdsagent/sdsagent/internal/metrics"
)

// describing records the descriptions of what is registered on it, as a
// registry reads them at registration.
type describing struct{ descs []string }

func (d *describing) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	for desc := range ch {
		d.descs = append(d.descs, desc.String())
	}
	return nil
}

func (d *describing) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = d.Register(c)
	}
}

func (d *describing) Unregister(prometheus.Collector) bool { return false }

// The Go collector is not built at start: registering the metrics
// describes no go_ metric. The first scrape still has them all.
func TestGoCollectorBuiltAtFirstScrape(t *testing.T) {
	d := &describing{}
	metrics.New(d)
	for _, desc := range d.descs {
		if strings.Contains(desc, `fqName: "go_`) {
			t.Fatalf("New built the Go collector at start: %s", desc)
		}
	}
	if len(d.descs) == 0 {
		t.Fatal("New registered nothing")
	}

	reg := prometheus.NewRegistry()
	metrics.New(reg)
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	have := map[string]bool{}
	for _, f := range families {
		have[f.GetName()] = true
	}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "process_cpu_seconds_total", "sdsagent_workload_cert_expired"} {
		if !have[name] {
			t.Errorf("first scrape lacks %s", name)
		}
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("second gather: %v", err)
	}
}
