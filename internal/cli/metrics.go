package cli

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ledgerMetrics counts and times the ledger requests of `run`.
type ledgerMetrics struct {
	requests *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
}

func newLedgerMetrics(reg prometheus.Registerer) *ledgerMetrics {
	m := &ledgerMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wallets_worker_ledger_requests_total",
			Help: "Ledger requests, by endpoint (operation) and HTTP status (0: no answer).",
		}, []string{"endpoint", "status"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wallets_worker_ledger_request_seconds",
			Help:    "Ledger request latency, by endpoint (operation).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
		}, []string{"endpoint"}),
	}
	reg.MustRegister(m.requests, m.seconds)
	return m
}

func (m *ledgerMetrics) observe(op string, status int, d time.Duration) {
	m.requests.WithLabelValues(op, strconv.Itoa(status)).Inc()
	m.seconds.WithLabelValues(op).Observe(d.Seconds())
}
