package worker

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/messages"
)

// Outcome label values of wallets_worker_commands_total.
const (
	OutcomeCreated          = "created"
	OutcomeReplayed         = "replayed"
	OutcomeAlreadyExists    = "already_exists"
	OutcomeKeyReused        = "key_reused"
	OutcomeInvalid          = "invalid"
	OutcomeLedgerRejected   = "ledger_rejected"
	OutcomeRetriesExhausted = "retries_exhausted"
)

// Metrics are the worker's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	commands     *prometheus.CounterVec
	redeliveries prometheus.Counter
	retries      *prometheus.CounterVec
	deadLetters  *prometheus.CounterVec
	inFlight     prometheus.Gauge
	handling     prometheus.Histogram
	age          prometheus.Histogram
	claimWaits   prometheus.Counter
	noTimeLefts  prometheus.Counter

	breaker     prometheus.Gauge
	transitions *prometheus.CounterVec
	probes      *prometheus.CounterVec
	held        prometheus.Gauge

	orderWaits   prometheus.Counter
	orderWaiting prometheus.Gauge
	chainedCmds  prometheus.Counter
}

// NewMetrics creates the worker's metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wallets_worker_commands_total",
			Help: "Commands settled, by kind (the subject's kind token; unknown for a kind no worker has) and outcome (created, replayed, key_reused, invalid, ledger_rejected, retries_exhausted, and each rejection code of the kind in lower case).",
		}, []string{"kind", "outcome"}),
		redeliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wallets_worker_redeliveries_total",
			Help: "Deliveries received that were not a command's first delivery.",
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wallets_worker_retries_total",
			Help: "Deliveries handed back to JetStream for a later attempt, by reason (transient, deferred, shutdown).",
		}, []string{"reason"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wallets_worker_dead_letters_total",
			Help: "Commands copied to the dead-letter stream, by kind and code.",
		}, []string{"kind", "code"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wallets_worker_commands_in_flight",
			Help: "Commands being handled or settled by this process.",
		}),
		handling: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wallets_worker_handling_seconds",
			Help:    "Time from the receipt of a delivery to its settle.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}),
		age: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wallets_worker_command_age_seconds",
			Help:    "Time from the command's publish (its JetStream timestamp) to its outcome.",
			Buckets: prometheus.ExponentialBuckets(0.001, 3, 14),
		}),
		noTimeLefts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wallets_worker_ledger_not_sent_total",
			Help: "Ledger calls not sent because their attempt's deadline was too near; each got a new attempt window, not a retry.",
		}),
		claimWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wallets_worker_claim_waits_total",
			Help: "Times a command waited because another command held the claim on its balance.",
		}),
		breaker: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wallets_worker_ledger_breaker_state",
			Help: "State of the ledger circuit breaker: 0 closed (ledger available), 1 open (commands held, ledger probed), 2 half-open (one held command on trial).",
		}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wallets_worker_ledger_breaker_transitions_total",
			Help: "Changes of the ledger circuit breaker's state, by the state entered (open, half_open, closed).",
		}, []string{"to"}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wallets_worker_ledger_probes_total",
			Help: "Health checks of the ledger while the breaker is open, by result (ok, failed).",
		}, []string{"result"}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wallets_worker_commands_held",
			Help: "Commands waiting for the ledger while the breaker is open or half-open, their leases renewed.",
		}),
		orderWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wallets_worker_order_waits_total",
			Help: "Commands that waited for an earlier command of their wallet (--order wallet), once per delivery.",
		}),
		orderWaiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wallets_worker_order_waiting",
			Help: "Commands waiting now, in their slots, for an earlier command of their wallet to settle.",
		}),
		chainedCmds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wallets_worker_chained_total",
			Help: "Commands decided in the chain of an earlier command of their wallet: sent to the ledger in one ordered bulk with it (--order wallet).",
		}),
	}
	reg.MustRegister(m.commands, m.redeliveries, m.retries, m.deadLetters, m.inFlight, m.handling, m.age, m.claimWaits, m.noTimeLefts,
		m.breaker, m.transitions, m.probes, m.held, m.orderWaits, m.orderWaiting, m.chainedCmds)
	for _, s := range breakerStateNames {
		m.transitions.WithLabelValues(s)
	}
	m.probes.WithLabelValues(probeOK)
	m.probes.WithLabelValues(probeFailed)
	for _, r := range []string{retryTransient, retryDeferred, retryShutdown, retryOrder} {
		m.retries.WithLabelValues(r)
	}
	return m
}

// kinds makes every usual series of the kinds show from the start, at 0.
func (m *Metrics) kinds(names []string) {
	if m == nil {
		return
	}
	for _, k := range append(names, messages.KindUnknown) {
		for _, o := range []string{OutcomeCreated, OutcomeReplayed, OutcomeKeyReused, OutcomeInvalid,
			OutcomeLedgerRejected, OutcomeRetriesExhausted} {
			if k == messages.KindUnknown && o != OutcomeInvalid {
				continue
			}
			m.commands.WithLabelValues(k, o)
		}
		if k != messages.KindUnknown {
			m.commands.WithLabelValues(k, outcomeSettledBefore)
		}
		for _, c := range []messages.Code{messages.CodeInvalidCommand, messages.CodeLedgerRejected, messages.CodeRetriesExhausted} {
			if k == messages.KindUnknown && c != messages.CodeInvalidCommand {
				continue
			}
			m.deadLetters.WithLabelValues(k, string(c))
		}
	}
}

func (m *Metrics) received(d *delivery) {
	if m == nil {
		return
	}
	m.inFlight.Inc()
	if d.delivered > 1 {
		m.redeliveries.Inc()
	}
}

func (m *Metrics) done() {
	if m == nil {
		return
	}
	m.inFlight.Dec()
}

func (m *Metrics) settled(d *delivery, o handlers.Result, now time.Time) {
	if m == nil {
		return
	}
	m.settledAs(d, o.Label(), now)
	if code := o.Code(); code.DeadLetters() {
		m.deadLetters.WithLabelValues(d.kindLabel(), string(code)).Inc()
	}
}

// outcomeSettledBefore is the outcome label of a delivery acknowledged
// without being decided: its event an earlier delivery stored (its ack was
// lost), or its command another delivery settled (a copy held here while
// its lease lapsed).
const outcomeSettledBefore = "settled_before"

func (m *Metrics) settledAs(d *delivery, outcome string, now time.Time) {
	if m == nil {
		return
	}
	m.commands.WithLabelValues(d.kindLabel(), outcome).Inc()
	m.handling.Observe(now.Sub(d.receivedAt).Seconds())
	if !d.published.IsZero() {
		m.age.Observe(now.Sub(d.published).Seconds())
	}
}

func (m *Metrics) retried(reason string) {
	if m == nil {
		return
	}
	m.retries.WithLabelValues(reason).Inc()
}

func (m *Metrics) noTimeLeft() {
	if m == nil {
		return
	}
	m.noTimeLefts.Inc()
}

func (m *Metrics) claimWait() {
	if m == nil {
		return
	}
	m.claimWaits.Inc()
}

// Result labels of wallets_worker_ledger_probes_total.
const (
	probeOK     = "ok"
	probeFailed = "failed"
)

func (m *Metrics) breakerState(s int32) {
	if m == nil {
		return
	}
	m.breaker.Set(float64(s))
	m.transitions.WithLabelValues(breakerStateNames[s]).Inc()
}

func (m *Metrics) probed(ok bool) {
	if m == nil {
		return
	}
	if ok {
		m.probes.WithLabelValues(probeOK).Inc()
	} else {
		m.probes.WithLabelValues(probeFailed).Inc()
	}
}

func (m *Metrics) holding(delta int) {
	if m == nil {
		return
	}
	m.held.Add(float64(delta))
}

// orderWait counts a delivery that waits for its wallet's line; waiting(-1)
// when it stops waiting.
func (m *Metrics) orderWait(delta int) {
	if m == nil {
		return
	}
	if delta > 0 {
		m.orderWaits.Inc()
	}
	m.orderWaiting.Add(float64(delta))
}

// chained counts the commands decided in the chain of an earlier one.
func (m *Metrics) chained(n int) {
	if m == nil {
		return
	}
	m.chainedCmds.Add(float64(n))
}
