package caclient_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/cache"
)

// refuseWith answers code, with the grpc-retry-pushback-ms trailer set to
// each of pushback when there is one.
func refuseWith(code codes.Code, pushback ...string) func(ctx context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		if len(pushback) > 0 {
			md := metadata.MD{}
			md["grpc-retry-pushback-ms"] = pushback
			if err := grpc.SetTrailer(ctx, md); err != nil {
				return nil, err
			}
		}
		return nil, status.Error(code, "too many certificate requests")
	}
}

// TestSignCarriesPushback checks that the CA's grpc-retry-pushback-ms
// trailer, sent by a real gRPC server, comes back in the error as the
// agent's retry policy reads it (cache.ClassifyFailure), and that the
// error says the CA is overloaded.
func TestSignCarriesPushback(t *testing.T) {
	tests := []struct {
		name     string
		respond  func(ctx context.Context) ([]string, error)
		code     codes.Code
		want     cache.Failure
		parts    []string
		warnings int // unusable pushback warnings after two calls
	}{
		{"resource exhausted with pushback", refuseWith(codes.ResourceExhausted, "5000"), codes.ResourceExhausted,
			cache.Failure{Overloaded: true, Pushback: 5 * time.Second}, []string{"overloaded", "retry in 5s", "too many certificate requests"}, 0},
		{"pushback zero", refuseWith(codes.ResourceExhausted, "0"), codes.ResourceExhausted,
			cache.Failure{Overloaded: true}, []string{"overloaded", "retrying with backoff"}, 0},
		{"resource exhausted without pushback", refuseWith(codes.ResourceExhausted), codes.ResourceExhausted,
			cache.Failure{Overloaded: true}, []string{"overloaded", "retrying with backoff"}, 0},
		{"pushback on another code", refuseWith(codes.Unavailable, "250"), codes.Unavailable,
			cache.Failure{Overloaded: true, Pushback: 250 * time.Millisecond}, []string{"retry in 250ms"}, 0},
		{"negative pushback is none", refuseWith(codes.ResourceExhausted, "-5"), codes.ResourceExhausted,
			cache.Failure{Overloaded: true}, []string{"overloaded"}, 1},
		{"garbage pushback is none", refuseWith(codes.ResourceExhausted, "soon"), codes.ResourceExhausted,
			cache.Failure{Overloaded: true}, []string{"overloaded"}, 1},
		{"two pushbacks are none", refuseWith(codes.ResourceExhausted, "100", "200"), codes.ResourceExhausted,
			cache.Failure{Overloaded: true}, []string{"overloaded"}, 1},
		{"a refusal is not overload", refuseWith(codes.PermissionDenied), codes.PermissionDenied,
			cache.Failure{}, []string{"CA refused to sign"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := startCA(t, &fakeCA{respond: tt.respond})
			cfg := ca.config(t)
			core, logs := observer.New(zapcore.DebugLevel)
			cfg.Logger = zap.New(core)
			c := newClient(t, cfg)
			for range 2 {
				_, err := sign(t, c)
				wantError(t, err, tt.code, tt.parts...)
				if got := cache.ClassifyFailure(err); got != tt.want {
					t.Errorf("ClassifyFailure(%v) = %+v, want %+v", err, got, tt.want)
				}
			}
			warns := logs.FilterMessage("ca sent an unusable retry pushback; ignoring it").All()
			if len(warns) != tt.warnings {
				t.Errorf("%d warnings about the pushback after two calls, want %d (rate-limited)", len(warns), tt.warnings)
			}
		})
	}
}

// TestSignOverloadNeedsAConnection checks the line between a CA that is
// down (not overloaded: the agent retries fast to see it come back) and
// one that took the call and did not answer in time (overloaded).
func TestSignOverloadNeedsAConnection(t *testing.T) {
	t.Run("down", func(t *testing.T) {
		ca := startCA(t, &fakeCA{})
		cfg := ca.config(t)
		cfg.Addr = freeAddr(t)
		c := newClient(t, cfg)
		_, err := sign(t, c)
		wantError(t, err, codes.Unavailable, "unreachable")
		if f := cache.ClassifyFailure(err); f.Overloaded {
			t.Errorf("a CA that is down classified as %+v, want not overloaded", f)
		}
	})
	t.Run("took the call, no answer in time", func(t *testing.T) {
		ca := startCA(t, &fakeCA{respond: func(ctx context.Context) ([]string, error) {
			<-ctx.Done()
			return nil, status.FromContextError(ctx.Err()).Err()
		}})
		cfg := ca.config(t)
		cfg.Timeout = 300 * time.Millisecond
		c := newClient(t, cfg)
		_, err := sign(t, c)
		wantError(t, err, codes.DeadlineExceeded, ca.addr, "took the call on a connection that is up")
		if f := cache.ClassifyFailure(err); !f.Overloaded || f.Pushback != 0 {
			t.Errorf("a CA that took the call and hung classified as %+v, want overloaded without pushback", f)
		}
	})
}
