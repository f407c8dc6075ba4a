package devca_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/devca"
)

// TestMaxPendingCSRsPushesBack checks the dev CA over real gRPC: under
// MaxPendingCSRs a CSR is signed; over it, the CSR is answered
// ResourceExhausted with a message naming the flag and a
// grpc-retry-pushback-ms trailer, each caller refused in a row getting a
// later slot; once a slot frees, CSRs are signed again.
func TestMaxPendingCSRsPushesBack(t *testing.T) {
	clk := clocktest.New(time.Now())
	ca, client, token := startCA(t, devca.Config{MaxPendingCSRs: 2, Clock: clk})
	call := func() (*securityapi.IstioCertificateResponse, metadata.MD, error) {
		var trailer metadata.MD
		resp, err := client.CreateCertificate(authCtx(t, token), &securityapi.IstioCertificateRequest{
			Csr: csrPEM(t, csrSpec{uris: []string{workloadID}}),
		}, grpc.Trailer(&trailer))
		return resp, trailer, err
	}

	release := devca.HoldCSRSlots(ca, 1)
	if _, trailer, err := call(); err != nil {
		t.Fatalf("one CSR in progress of 2 allowed: CreateCertificate = %v, want signed", err)
	} else if v := trailer.Get("grpc-retry-pushback-ms"); len(v) != 0 {
		t.Fatalf("signed CSR carries pushback %v", v)
	}
	release()

	release = devca.HoldCSRSlots(ca, 2)
	var last int64
	for i := range 3 {
		_, trailer, err := call()
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("CSR over the bound: %v, want ResourceExhausted", err)
		}
		for _, want := range []string{"CA overloaded", "2 certificate requests in progress", "--max-pending-csrs", "grpc-retry-pushback-ms"} {
			if !strings.Contains(status.Convert(err).Message(), want) {
				t.Errorf("message %q does not say %q", status.Convert(err).Message(), want)
			}
		}
		v := trailer.Get("grpc-retry-pushback-ms")
		if len(v) != 1 {
			t.Fatalf("refused CSR carries pushback %v, want one value", v)
		}
		ms, err := strconv.ParseInt(v[0], 10, 64)
		if err != nil || ms <= 0 {
			t.Fatalf("pushback %q is not a positive whole number of ms", v[0])
		}
		// The clock stands still: every refused caller is given the
		// slot after the previous one's.
		if ms <= last {
			t.Errorf("refusal %d: pushback %d ms, want more than the previous %d ms", i, ms, last)
		}
		last = ms
	}
	release()
	if _, _, err := call(); err != nil {
		t.Fatalf("slots free again: CreateCertificate = %v, want signed", err)
	}
}

func TestMaxPendingCSRsNegativeRefused(t *testing.T) {
	_, err := devca.New(devca.Config{Dir: t.TempDir(), MaxPendingCSRs: -1})
	if err == nil || !strings.Contains(err.Error(), "max pending CSRs -1 is negative") {
		t.Fatalf("New = %v, want the negative bound refused", err)
	}
}
