package debug

import (
	"bytes"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/cache"
)

func TestExpiredCertificatesAreShownExpired(t *testing.T) {
	f := newFixture(t)
	later := time.Now().Add(10 * 365 * 24 * time.Hour) // past every fixture leaf
	s := newServer(t, Config{
		Secrets: secretsOf(f.store, fakeToProto),
		Ready: func() error {
			return errors.New("workload certificate expired at 2027-03-01T00:00:00Z (1h0m0s ago); last renewal error: CA at istiod:15012 is unreachable")
		},
		Now: func() time.Time { return later },
	})
	url := serveLoopback(t, s)
	code, body, _ := get(t, newClient(t), url+"/debug/secrets")
	if code != http.StatusOK {
		t.Fatalf("GET /debug/secrets = %d %s", code, body)
	}
	f.assertNoKey(t, "/debug/secrets", body)
	dump, err := ParseSecrets(body)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, e := range dump.GetDynamicActiveSecrets() {
		states[e.GetName()] = e.GetErrorState().GetDetails()
	}
	if d := states[cache.WorkloadCertName]; !strings.HasPrefix(d, ExpiredPrefix+" since ") || !strings.Contains(d, "istiod:15012 is unreachable") {
		t.Fatalf("default error_state = %q, want EXPIRED since when, and the renewal error", d)
	}
	if d := states[fileCertName]; !strings.HasPrefix(d, ExpiredPrefix) {
		t.Fatalf("%s error_state = %q, want EXPIRED", fileCertName, d)
	}
	if d := states[cache.RootCertName]; d != "" {
		t.Fatalf("ROOTCA error_state = %q, want none", d)
	}

	// The CLI shows EXPIRED from the agent's verdict, whatever its own
	// clock says.
	var buf bytes.Buffer
	if err := WriteTable(&buf, dump, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n")[1:] {
		name, status := strings.Fields(line)[0], statusOf(line)
		want := statusActive
		if name == cache.WorkloadCertName || strings.HasPrefix(name, cache.FileCertPrefix) {
			want = statusExpired
		}
		if status != want {
			t.Errorf("row %q: status %s, want %s", line, status, want)
		}
	}
}

func TestWriteTableExpiredAtNow(t *testing.T) {
	f := newFixture(t)
	s := newServer(t, Config{Secrets: secretsOf(f.store, fakeToProto)})
	dump, err := s.secretsDump(s.cfg.Secrets())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, dump, time.Now().Add(10*365*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), statusExpired) {
		t.Fatalf("no EXPIRED row for leaves past NotAfter:\n%s", buf.String())
	}
}

// statusOf returns the STATUS column of a table row.
func statusOf(line string) string {
	for _, f := range strings.Fields(line) {
		if f == statusActive || f == statusExpired || f == statusWarming {
			return f
		}
	}
	return ""
}
