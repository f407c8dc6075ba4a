package main

import (
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/debug"
	"github.com/sdsagent/sdsagent/internal/peercred"
	"github.com/sdsagent/sdsagent/internal/pki"
)

// debugSecrets lists src's secrets in the shape internal/debug reads
// (which imports neither cache nor sds). Each secret's Proto converts,
// with toProto (sds.ToProto), a copy whose private key is the key it is
// given, so the debug views never hand the real key to toProto.
func debugSecrets(src interface{ Snapshot() *cache.Snapshot }, toProto func(*cache.Secret) (*tlsv3.Secret, error)) debug.Secrets {
	return func() []debug.Secret {
		snap := src.Snapshot()
		out := make([]debug.Secret, 0, snap.Len())
		for _, name := range snap.Names() {
			sec, ok := snap.Get(name)
			if !ok {
				continue
			}
			out = append(out, debug.Secret{
				Name:       sec.Name,
				Cert:       sec.Kind == cache.TLSCertificate && len(sec.Certs) > 0,
				NotAfter:   sec.NotAfter(),
				Workload:   sec.Name == cache.WorkloadCertName,
				UpdatedAt:  sec.UpdatedAt,
				PrivateKey: []byte(sec.PrivateKeyPEM),
				Proto: func(key []byte) (*tlsv3.Secret, error) {
					cp := *sec
					if len(cp.PrivateKeyPEM) > 0 {
						cp.PrivateKeyPEM = pki.PrivateKeyPEM(key)
					}
					return toProto(&cp)
				},
			})
		}
		return out
	}
}

// debugPeerCheck converts the socket check's stats for /debug/sds; nil
// (check off) stays nil.
func debugPeerCheck(stats func() peercred.Stats) func() debug.PeerCheck {
	if stats == nil {
		return nil
	}
	return func() debug.PeerCheck {
		st := stats()
		pc := debug.PeerCheck{AllowedUIDs: st.AllowedUIDs, AllowedGIDs: st.AllowedGIDs, Refused: st.Refused}
		if r := st.LastRefused; r != nil {
			pc.LastRefused = &debug.PeerRefusal{PID: r.PID, UID: r.UID, GID: r.GID, At: r.At, Reason: r.Reason}
		}
		return pc
	}
}
