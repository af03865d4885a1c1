package cli

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
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

// registerTxMetrics exposes the client's transaction limit and requests in
// flight as gauges, read when scraped.
func registerTxMetrics(reg prometheus.Registerer, c *ledgeradapter.Client) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wallets_worker_ledger_tx_limit",
			Help: "Ledger transaction requests the client lets in flight now (seeks throughput up to --ledger-tx-concurrency)."},
			func() float64 { return float64(c.TxLimit()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wallets_worker_ledger_tx_in_flight",
			Help: "Ledger transaction requests of the client in flight now."},
			func() float64 { return float64(c.TxInFlight()) }),
	)
}

// registerBatcherMetrics exposes the Batcher's adaptive limits as gauges,
// read when scraped.
func registerBatcherMetrics(reg prometheus.Registerer, b *ledgeradapter.Batcher) {
	gauge := func(name, help string, v func(ledgeradapter.BatcherStats) int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			return float64(v(b.Stats()))
		})
	}
	reg.MustRegister(
		gauge("wallets_worker_ledger_read_limit", "Ledger read requests the Batcher lets in flight now (adaptive).",
			func(s ledgeradapter.BatcherStats) int { return s.ReadLimit }),
		gauge("wallets_worker_ledger_write_limit", "Ledger write requests the Batcher lets in flight now (adaptive).",
			func(s ledgeradapter.BatcherStats) int { return s.WriteLimit }),
		gauge("wallets_worker_ledger_read_batch", "Most account reads one list-accounts request carries now (adaptive).",
			func(s ledgeradapter.BatcherStats) int { return s.ReadBatch }),
		gauge("wallets_worker_ledger_write_batch", "Most metadata writes one bulk request carries now (adaptive).",
			func(s ledgeradapter.BatcherStats) int { return s.WriteBatch }),
		gauge("wallets_worker_ledger_reads_in_flight", "Ledger read requests of the Batcher in flight now.",
			func(s ledgeradapter.BatcherStats) int { return s.ReadsInFlight }),
		gauge("wallets_worker_ledger_writes_in_flight", "Ledger write requests of the Batcher in flight now.",
			func(s ledgeradapter.BatcherStats) int { return s.WritesInFlight }),
		gauge("wallets_worker_ledger_reads_waiting", "Account reads queued in the Batcher for a request.",
			func(s ledgeradapter.BatcherStats) int { return s.ReadsWaiting }),
		gauge("wallets_worker_ledger_writes_waiting", "Metadata writes queued in the Batcher for a request.",
			func(s ledgeradapter.BatcherStats) int { return s.WritesWaiting }),
	)
}
