package main

import (
	"context"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/config"
	"github.com/sdsagent/sdsagent/internal/debug"
	"github.com/sdsagent/sdsagent/sds"
)

// Adapters between the components runAgent wires: each turns what one
// package offers into what another asks for, and holds no policy.

// firstCertificate returns memtrim's Served: it blocks until mgr is
// ready (the first certificate is served) or ctx ends.
func firstCertificate(mgr *cache.Manager) func(ctx context.Context) bool {
	return func(ctx context.Context) bool {
		updates, cancel := mgr.Subscribe()
		defer cancel()
		for mgr.Ready() != nil {
			select {
			case <-ctx.Done():
				return false
			case <-updates:
			}
		}
		return true
	}
}

// debugStreams returns srv's open streams in the debug endpoint's form.
func debugStreams(srv *sds.Server) func() []debug.StreamInfo {
	return func() []debug.StreamInfo {
		in := srv.Streams()
		out := make([]debug.StreamInfo, len(in))
		for i, s := range in {
			out[i] = debug.StreamInfo(s)
		}
		return out
	}
}

// trustBundleFiles turns --trust-bundle settings into cache's form.
func trustBundleFiles(in []config.TrustBundle) []cache.TrustBundleFile {
	var out []cache.TrustBundleFile
	for _, b := range in {
		out = append(out, cache.TrustBundleFile{TrustDomain: b.TrustDomain, Path: b.Path})
	}
	return out
}

// sdsLoad returns memtrim's Load: srv's open connections plus streams,
// what the heap grows with.
func sdsLoad(srv *sds.Server) func() int {
	return func() int {
		conns, streams := srv.Open()
		return conns + streams
	}
}
