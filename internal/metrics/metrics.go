// Package metrics defines the agent's Prometheus metrics. Every component
// receives the same *Metrics from its constructor; nothing is global.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every metric name.
const Namespace = "sdsagent"

// CSR results used as the "result" label of CSRRequests and CSRDuration.
const (
	ResultSuccess      = "success"       // signed and verified
	ResultCAError      = "ca_error"      // the CA call failed (down, timeout, refused)
	ResultVerifyFailed = "verify_failed" // the CA answered with a chain we refused to serve
	ResultLocalError   = "local_error"   // key, CSR or token could not be produced
)

// Metrics holds every collector the agent exports.
type Metrics struct {
	// CertExpiryTimestamp is the NotAfter of the leaf (or earliest root) of
	// each served resource, as Unix seconds.
	CertExpiryTimestamp *prometheus.GaugeVec
	// CSRRequests counts CSRs sent, by result.
	CSRRequests *prometheus.CounterVec
	// CSRDuration observes the latency of each CSR round trip, by result.
	CSRDuration *prometheus.HistogramVec
	// Rotations counts workload certificates replaced by a newer one.
	Rotations prometheus.Counter
	// SDSStreams is the number of open SDS streams, by API (sotw, delta).
	SDSStreams *prometheus.GaugeVec
	// SDSPushes counts responses sent on SDS streams, by API (sotw, delta, fetch).
	SDSPushes *prometheus.CounterVec
	// SDSNacks counts NACKs received from clients.
	SDSNacks prometheus.Counter
	// SDSUnknownNames counts requests for names the agent cannot serve.
	SDSUnknownNames prometheus.Counter
	// FileErrors counts failures to read or parse file-backed secrets.
	FileErrors *prometheus.CounterVec
	// SDSConnectionsRefused counts socket connections closed by the
	// --allowed-uids/--allowed-gids check.
	SDSConnectionsRefused prometheus.Counter
	// CRLStale is the number of served CRLs past their NextUpdate.
	CRLStale prometheus.Gauge
	// WorkloadCertExpired is 1 while the workload certificate ("default")
	// is past its NotAfter, else 0.
	WorkloadCertExpired prometheus.Gauge
	// LimitRejections counts requests, streams, connections and names
	// refused by a limit, by limit.
	LimitRejections *prometheus.CounterVec
}

// New creates the collectors and registers them, together with the Go and
// process collectors, on reg; the Go collector is built at the first
// scrape, off the path to the first certificate. A nil reg leaves them unregistered, which
// tests use when they do not look at metrics.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		CertExpiryTimestamp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "cert_expiry_timestamp_seconds",
			Help: "NotAfter of the certificate served under each resource name (for trust roots, the earliest of them), in Unix seconds.",
		}, []string{"resource"}),
		CSRRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "csr_requests_total",
			Help: "CSRs sent to the CA, by result (success, ca_error, verify_failed, local_error).",
		}, []string{"result"}),
		CSRDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "csr_duration_seconds",
			Help:    "Time from key generation to a verified chain (or failure), by result.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"result"}),
		Rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "rotations_total",
			Help: "Workload certificates replaced by a newly issued one.",
		}),
		SDSStreams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "sds_streams",
			Help: "Open SDS streams, by API (sotw, delta).",
		}, []string{"api"}),
		SDSPushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "sds_pushes_total",
			Help: "SDS responses sent, by API (sotw, delta, fetch).",
		}, []string{"api"}),
		SDSNacks: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "sds_nacks_total",
			Help: "SDS responses rejected by a client (NACK).",
		}),
		SDSUnknownNames: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "sds_unknown_names_total",
			Help: "Resource names requested over SDS that the agent cannot serve, counted once per stream and name.",
		}),
		FileErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "file_errors_total",
			Help: "Failures to read or validate file-backed secrets, by reason.",
		}, []string{"reason"}),
		SDSConnectionsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "sds_connections_refused_total",
			Help: "SDS socket connections closed unread because the caller's uid and gid are not allowed (--allowed-uids, --allowed-gids).",
		}),
		CRLStale: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "crl_stale",
			Help: "CRLs served in ROOTCA that are past their NextUpdate (peers that check CRL times refuse certificates of their issuers).",
		}),
		WorkloadCertExpired: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "workload_cert_expired",
			Help: "1 while the workload certificate (default) is past its NotAfter and nothing valid replaced it, else 0.",
		}),
		LimitRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "limit_rejections_total",
			Help: "Requests, streams, connections and resource names refused by a limit, by limit (names_per_request, name_bytes, streams_per_connection, streams, message_bytes, handshake_timeout, watched_files, connections).",
		}, []string{"limit"}),
	}
	if reg != nil {
		reg.MustRegister(m.WorkloadCertExpired)
		reg.MustRegister(
			m.CertExpiryTimestamp, m.CSRRequests, m.CSRDuration, m.Rotations,
			m.SDSStreams, m.SDSPushes, m.SDSNacks, m.SDSUnknownNames, m.FileErrors,
			m.SDSConnectionsRefused, m.CRLStale, m.LimitRejections,
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
			newLazyCollector(func() prometheus.Collector { return collectors.NewGoCollector() }),
		)
	}
	return m
}

// ObserveCSR records one CSR attempt that took d and ended with result.
func (m *Metrics) ObserveCSR(result string, d time.Duration) {
	m.CSRRequests.WithLabelValues(result).Inc()
	m.CSRDuration.WithLabelValues(result).Observe(d.Seconds())
}
