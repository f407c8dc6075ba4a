package sds

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// BenchmarkSotWInitialResponse measures opening a stream and receiving
// the first response for default.
func BenchmarkSotWInitialResponse(b *testing.B) {
	h := newHarnessWith(b, harnessOptions{infoLogs: true})
	h.publishAll()
	b.ReportAllocs()
	for b.Loop() {
		st, err := sdstest.OpenStream(h.ctx(), h.conn)
		if err != nil {
			b.Fatal(err)
		}
		if err := st.Request(def); err != nil {
			b.Fatal(err)
		}
		h.recv(st)
		st.Close()
	}
}

// BenchmarkRotationPush measures a rotation reaching 100 open streams,
// each of which ACKs it.
func BenchmarkRotationPush(b *testing.B) {
	const streams = 100
	h := newHarnessWith(b, harnessOptions{infoLogs: true})
	h.publishAll()
	all := make([]*sdstest.Stream, streams)
	for i := range all {
		all[i] = h.openStream()
		if err := all[i].Request(def); err != nil {
			b.Fatal(err)
		}
		h.recv(all[i])
		if err := all[i].ACK(); err != nil {
			b.Fatal(err)
		}
	}
	// Alternate between two leaves so issuing is not measured.
	secrets := [2]*cache.Secret{leafSecret(h.issue(spiffeA)), leafSecret(h.issue(spiffeA))}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		// Store.Update takes ownership of the secret, so give it a copy.
		sec := *secrets[i%2]
		i++
		h.store.Update([]*cache.Secret{&sec}, nil)
		for _, st := range all {
			h.recv(st)
			if err := st.ACK(); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkFetch measures one FetchSecrets call for default and ROOTCA.
func BenchmarkFetch(b *testing.B) {
	h := newHarnessWith(b, harnessOptions{infoLogs: true})
	h.publishAll()
	ctx := h.ctx()
	names := []string{def, root}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := sdstest.Fetch(ctx, h.conn, names); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFetchUnknownNames measures a hostile client: each op is one
// FetchSecrets for 100 names the agent cannot serve, logged at info as in
// production. It reports the log bytes written per 1,000 bad requests.
func BenchmarkFetchUnknownNames(b *testing.B) {
	h := newHarnessWith(b, harnessOptions{infoLogs: true})
	h.publishAll()
	ctx := h.ctx()
	names := make([]string, DefaultMaxNamesPerRequest)
	for i := range names {
		names[i] = fmt.Sprintf("unknown-%d-%s", i, strings.Repeat("n", 200))
	}
	before := len(h.logText.Bytes())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := sdstest.Fetch(ctx, h.conn, names); status.Code(err) != codes.NotFound {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(h.logText.Bytes())-before)/float64(b.N)*1000, "logbytes/1000req")
}
