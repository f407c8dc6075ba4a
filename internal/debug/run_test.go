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

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestRunServesUntilCancelled starts Run on a free port, reads the port
// from its "listening" line, gets /healthz, and checks that cancelling
// the context makes Run return nil and closes the port.
func TestRunServesUntilCancelled(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	s, err := New(Config{Addr: "127.0.0.1:0", Ready: func() error { return nil }, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	var addr string
	deadline := time.After(10 * time.Second)
	for addr == "" {
		if l := logs.FilterMessage("http endpoint listening").All(); len(l) > 0 {
			addr, _ = l[0].ContextMap()["addr"].(string)
			continue
		}
		select {
		case err := <-done:
			t.Fatalf("Run returned %v before listening", err)
		case <-deadline:
			t.Fatal("no \"http endpoint listening\" line")
		case <-time.After(time.Millisecond):
		}
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz = %d %q", resp.StatusCode, body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after Run returned", addr)
	}
}

func TestRunFailsOnABadAddress(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	tests := []struct {
		name, addr, want string
	}{
		{"not an address", "127.0.0.1:notaport", "debug: listen on 127.0.0.1:notaport"},
		{"port taken", taken.Addr().String(), "address already in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(Config{Addr: tt.addr, Ready: func() error { return nil }})
			if err != nil {
				t.Fatal(err)
			}
			// Run must return by itself: the context never ends.
			err = s.Run(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) || errors.Is(err, context.Canceled) {
				t.Fatalf("Run = %v, want an error with %q", err, tt.want)
			}
		})
	}
}
