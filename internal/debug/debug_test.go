package debug

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestEndpoints(t *testing.T) {
	var ready error = errors.New("no workload certificate yet: no CSR sent yet")
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "sdsagent_test_total", Help: "test"})
	reg.MustRegister(c)
	s, err := New(Config{Addr: "127.0.0.1:0", Ready: func() error { return ready }, Gatherer: reg})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
	base := "http://" + lis.Addr().String()
	get := func(path string) (int, string) {
		t.Helper()
		client := &http.Client{Timeout: 5 * time.Second}
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	if code, body := get("/ready"); code != 503 || !strings.Contains(body, "no CSR sent yet") {
		t.Fatalf("/ready before = %d %q", code, body)
	}
	ready = nil
	if code, body := get("/ready"); code != 200 || body != "ready\n" {
		t.Fatalf("/ready after = %d %q", code, body)
	}
	c.Inc()
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "sdsagent_test_total 1") {
		t.Fatalf("/metrics = %d %q", code, body)
	}
}
