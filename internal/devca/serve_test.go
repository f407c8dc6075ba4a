package devca_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	securityapi "istio.io/api/security/v1alpha1"

	"github.com/sdsagent/sdsagent/internal/devca"
)

func TestServe_ReturnsNilOnCancel(t *testing.T) {
	tests := []struct {
		name string
		// before runs against the serving CA before ctx is cancelled.
		before func(t *testing.T, ca *devca.CA, addr string)
		// cancelFirst cancels ctx before Serve is called.
		cancelFirst bool
	}{
		{name: "idle", before: func(*testing.T, *devca.CA, string) {}},
		{name: "cancelled before serve", cancelFirst: true},
		{
			name: "after a call with the connection open",
			before: func(t *testing.T, ca *devca.CA, addr string) {
				client := dial(t, ca, addr)
				_, err := client.CreateCertificate(authCtx(t, readToken(t, ca)), &securityapi.IstioCertificateRequest{
					Csr: csrPEM(t, csrSpec{uris: []string{workloadID}}),
				})
				if err != nil {
					t.Fatalf("CreateCertificate: %v", err)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ca := newCA(t, devca.Config{})
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatalf("listen: %v", err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			if tc.cancelFirst {
				cancel()
			}
			done := make(chan error, 1)
			go func() { done <- ca.Serve(ctx, lis) }()
			if tc.before != nil {
				tc.before(t, ca, lis.Addr().String())
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve = %v, want nil", err)
				}
			case <-time.After(waitTimeout):
				t.Fatalf("Serve did not return within %s of cancel", waitTimeout)
			}
			if err := lis.Close(); err == nil {
				t.Error("listener still open after Serve returned")
			}
		})
	}
}

func TestServe_ListenerFailure(t *testing.T) {
	ca := newCA(t, devca.Config{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- ca.Serve(ctx, lis) }()
	// Serve may not have reached Accept yet; either way closing the
	// listener must end it with an error, not hang or return nil.
	if err := lis.Close(); err != nil {
		t.Fatalf("close listener: %v", err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("Serve = nil after its listener failed, want an error")
		}
	case <-time.After(waitTimeout):
		t.Fatalf("Serve did not return within %s of its listener closing", waitTimeout)
	}
}

func TestServe_NilListener(t *testing.T) {
	ca := newCA(t, devca.Config{})
	if err := ca.Serve(context.Background(), nil); err == nil {
		t.Error("Serve(nil listener) = nil, want an error")
	}
}

func TestServe_TLS(t *testing.T) {
	extra := []string{"ca.example.test", "10.1.2.3", "fd00::1"}
	ca := newCA(t, devca.Config{ServerNames: extra})
	addr := serve(t, ca)
	pool := rootPool(t, ca)

	handshake := func(t *testing.T, cfg *tls.Config) (tls.ConnectionState, error) {
		t.Helper()
		d := &tls.Dialer{Config: cfg}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return tls.ConnectionState{}, err
		}
		defer func() {
			if err := conn.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
		}()
		return conn.(*tls.Conn).ConnectionState(), nil
	}

	names := append([]string{
		"localhost", "127.0.0.1", "::1",
		"istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local",
	}, extra...)
	for _, name := range names {
		t.Run("verifies as "+name, func(t *testing.T) {
			cs, err := handshake(t, &tls.Config{
				RootCAs:    pool,
				ServerName: name,
				MinVersion: tls.VersionTLS12,
				NextProtos: []string{"h2"},
			})
			if err != nil {
				t.Fatalf("TLS handshake as %s: %v", name, err)
			}
			if n := len(cs.PeerCertificates); n != 1 {
				t.Errorf("server sent %d certificates, want only its own (clients hold the root)", n)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				t.Errorf("serving cert does not verify: %v", err)
			}
			if life := leaf.NotAfter.Sub(leaf.NotBefore); life < 364*24*time.Hour || life > 366*24*time.Hour {
				t.Errorf("serving cert lifetime %s, want about a year", life)
			}
		})
	}

	t.Run("unknown name rejected", func(t *testing.T) {
		_, err := handshake(t, &tls.Config{RootCAs: pool, ServerName: "evil.example", MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}})
		var hostErr x509.HostnameError
		if !errors.As(err, &hostErr) {
			t.Errorf("handshake as evil.example: %v, want a hostname error", err)
		}
	})

	t.Run("TLS 1.1 refused", func(t *testing.T) {
		_, err := handshake(t, &tls.Config{
			RootCAs:    pool,
			ServerName: "localhost",
			MinVersion: tls.VersionTLS10,
			MaxVersion: tls.VersionTLS11,
			NextProtos: []string{"h2"},
		})
		if err == nil || !strings.Contains(err.Error(), "protocol version") {
			t.Errorf("TLS 1.1 handshake: %v, want a protocol version error", err)
		}
	})

	t.Run("untrusted client refuses", func(t *testing.T) {
		_, err := handshake(t, &tls.Config{ServerName: "localhost", RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}})
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Errorf("handshake without the root: %v, want an unknown authority error", err)
		}
	})
}
