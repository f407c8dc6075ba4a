// Package outagesim holds a long-run test: 72 simulated hours of seeded,
// random CA outages and bad CA answers against the real cache.Manager and
// the real SDS server on a Unix socket, driven by a fake clock and checked
// every simulated minute by an Envoy-like client. It has no code of its
// own; see outagesim_test.go and the README ("Outages and expiry").
package outagesim
