// Package cache owns the secrets the agent serves: the workload identity
// it renews from a CA (or reads from mounted files) and the file-backed
// secrets streams ask for. It publishes immutable snapshots to
// subscribers, and can write the workload identity to disk for other
// tools (OutputWriter). It knows nothing of protobuf or gRPC.
//
// Read it in this order; each file does one thing:
//
//   - manager.go: the Manager, its public API, and the one place that
//     publishes the trust roots with the workload certificate.
//   - config.go: Config, its defaults and its checks.
//   - renew.go: the renewal loop: when to send a CSR, one attempt, what
//     to log when it fails.
//   - rotation.go, retry.go: pure functions for when to renew and how
//     long to wait after a failure.
//   - overload.go: pure functions that tell a CA that is overloaded from
//     one that is down, and how long to wait after it refused for load
//     (its pushback included).
//   - expiry.go: the expired state of the workload certificate, the
//     attempt timeout and the reachability probe the loop uses.
//   - mounted.go: the workload certificate from mounted files instead of
//     a CA.
//   - trust.go: composes ROOTCA and ALL from the primary, retiring and
//     anchor roots and the federated bundles, and returns them for the
//     Manager to publish.
//   - roots.go: pure functions on lists of roots that trust uses.
//   - crl.go: the CRL file: which CRLs are served in ROOTCA, their
//     staleness, the workload's own revocation.
//   - trustfiles.go: registers the trust files and logs their loads.
//   - files.go: the file registry, the one goroutine that loads, watches
//     and publishes file-backed secrets.
//   - demand.go: which file-backed names streams want, within the
//     watched-files limit, and why a name cannot be served.
//   - fileexpiry.go: warnings before file-backed certificates expire.
//   - filename.go: parses file-cert: and file-root: names.
//   - fileload.go: reads and validates PEM files, only regular files of
//     bounded size.
//   - secret.go, store.go: what is served (Secret, Snapshot) and the
//     Store that publishes snapshots to subscribers.
//   - output.go, outputdir.go: OutputWriter, which writes the workload
//     identity to a directory in kubelet's atomic layout.
package cache
