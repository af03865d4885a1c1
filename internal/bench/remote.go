package bench

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// LedgerURL is the Ledger of a run against a ledger at Config.LedgerURL.
const LedgerURL = "url"

// Defaults of a run against a ledger at a URL: a real ledger is some
// hundred times slower than the null one, and every command of the
// default workload is a new balance, so that creates/s and the baselines'
// writes/s measure the same thing.
const (
	DefaultURLCommands = 2000
	// ReadThenWriteInFlight is the read-then-write baseline's concurrency:
	// the wallets service's path under a loaded service.
	ReadThenWriteInFlight = 32
	// BulkBaselineSize and BulkBaselineInFlight are the bulk baseline's
	// elements per request and requests in flight: the best bulk measured
	// on the real ledger v2.4.12.
	BulkBaselineSize     = 50
	BulkBaselineInFlight = 8
	// DefaultBaselineTimeout bounds each request of the baselines: long, so
	// that they measure what the ledger can do rather than where a client
	// gives up (a bulk that times out partly lands, and cannot be counted).
	DefaultBaselineTimeout = time.Minute
)

// remoteMeter counts, at the worker's side, what a run sends to a ledger at
// a URL: every HTTP request (by the client's Observe hook, with its status
// and duration), and, for each call below the Batcher (one request each,
// batches being at most one page or bulk), how many were in flight at once
// and which timed out on the client's timeout.
type remoteMeter struct {
	armed    atomic.Bool
	inFlight atomic.Int64
	peak     atomic.Int64
	timeouts atomic.Int64

	mu       sync.Mutex
	requests int64
	statuses map[string]int64 // "204", "500", "0" (no answer)
	lat      []time.Duration
}

func newRemoteMeter() *remoteMeter { return &remoteMeter{statuses: map[string]int64{}} }

// observe is ledgeradapter.Config.Observe.
func (m *remoteMeter) observe(_ string, status int, d time.Duration) {
	if !m.armed.Load() {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests++
	m.statuses[strconv.Itoa(status)]++
	m.lat = append(m.lat, d)
}

// call brackets one call to the client.
func (m *remoteMeter) call(err *error) func() {
	if !m.armed.Load() {
		return func() {}
	}
	n := m.inFlight.Add(1)
	for {
		p := m.peak.Load()
		if n <= p || m.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return func() {
		m.inFlight.Add(-1)
		if errors.Is(*err, ledgeradapter.ErrTimeout) {
			m.timeouts.Add(1)
		}
	}
}

func (m *remoteMeter) snapshot() (requests int64, statuses map[string]int64, lat Latency) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := make(map[string]int64, len(m.statuses))
	for k, v := range m.statuses {
		st[k] = v
	}
	return m.requests, st, latencyOf(m.lat)
}

// meteredLedger is the ledger client as the worker's stack sees it, with
// every call metered.
type meteredLedger struct {
	m    *remoteMeter
	next ledgeradapter.BatchLedger
}

var _ ledgeradapter.BatchLedger = meteredLedger{}

func (l meteredLedger) GetAccount(ctx context.Context, ledger, address string) (a ledgeradapter.Account, found bool, err error) {
	defer l.m.call(&err)()
	return l.next.GetAccount(ctx, ledger, address)
}

func (l meteredLedger) AddAccountMetadata(ctx context.Context, ledger, address string, md map[string]string, key string) (r ledgeradapter.WriteResult, err error) {
	defer l.m.call(&err)()
	return l.next.AddAccountMetadata(ctx, ledger, address, md, key)
}

func (l meteredLedger) ListAccounts(ctx context.Context, ledger string, addresses []string) (m map[string]ledgeradapter.Account, err error) {
	defer l.m.call(&err)()
	return l.next.ListAccounts(ctx, ledger, addresses)
}

func (l meteredLedger) Bulk(ctx context.Context, ledger string, elems []ledgeradapter.BulkAddMetadata) (r []ledgeradapter.BulkResult, err error) {
	defer l.m.call(&err)()
	return l.next.Bulk(ctx, ledger, elems)
}

// urlLedger is the ledger client at Config.LedgerURL, built as `run` builds
// it with its defaults, metered; EnsureLedger has created the run's ledger.
func (r *runner) urlLedger(ctx context.Context) (ledgeradapter.BatchLedger, *meter, func(), func(), error) {
	r.remote = newRemoteMeter()
	client, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: r.cfg.LedgerURL, Observe: r.remote.observe})
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if err := client.EnsureLedger(ctx, r.cfg.LedgerName); err != nil {
		client.CloseIdleConnections()
		return nil, nil, nil, nil, fmt.Errorf("ledger %s at %s: %w", r.cfg.LedgerName, redactURL(r.cfg.LedgerURL), err)
	}
	return meteredLedger{r.remote, client}, &meter{}, func() { r.remote.armed.Store(true) }, client.CloseIdleConnections, nil
}

// URLReport is what the worker did to a ledger at a URL, and the same-run
// baselines on that ledger, each on addresses of its own with as many new
// balances as the worker's workload has (Workload.Fresh):
//
//   - Single: one POST …/accounts/{address}/metadata with an Idempotency-Key
//     per balance, at SingleInFlight requests in flight (by default the most
//     the worker had in flight);
//   - ReadThenWrite: the wallets service's path, GET the account then POST
//     its metadata, ReadThenWriteInFlight at once;
//   - Bulk: POST /v2/{ledger}/_bulk?continueOnFailure=true&parallel=true with
//     BulkBaselineSize ADD_METADATA elements a request, BulkBaselineInFlight
//     requests in flight.
type URLReport struct {
	URL string `json:"url"`
	// ClientTimeoutMs is the worker's client timeout, BaselineTimeoutMs
	// the baselines'.
	ClientTimeoutMs   float64 `json:"clientTimeoutMs"`
	BaselineTimeoutMs float64 `json:"baselineTimeoutMs"`
	// CreatesPerSecond is the worker's new balances over its phase's time.
	CreatesPerSecond float64 `json:"createsPerSecond"`
	// Requests is every HTTP request the worker's client sent during its
	// phase; RequestsPerCreate divides it by the new balances.
	Requests          int64   `json:"requests"`
	RequestsPerCreate float64 `json:"requestsPerCreate"`
	// PeakInFlight is the most ledger requests the worker had in flight.
	PeakInFlight int64 `json:"peakInFlight"`
	// Timeouts counts the worker's requests that hit the client timeout.
	Timeouts int64 `json:"timeouts"`
	// Statuses counts the answers the worker got by HTTP status ("0":
	// none came); Latency is per request.
	Statuses map[string]int64 `json:"statuses"`
	Latency  Latency          `json:"latencyMs"`
	// NewBalancesReplayed is how many commands for a new balance ended
	// replayed: their write landed but its answer was lost, and a retry
	// found it.
	NewBalancesReplayed int `json:"newBalancesReplayed"`

	Single        *LedgerBaseline `json:"single,omitempty"`
	ReadThenWrite *LedgerBaseline `json:"readThenWrite,omitempty"`
	Bulk          *LedgerBaseline `json:"bulk,omitempty"`
	// WorkerToBestWrite divides the worker's creates/s by the better of
	// Single and Bulk; WorkerToReadThenWrite and WorkerToSingle by those.
	WorkerToBestWrite     float64 `json:"workerToBestWrite,omitempty"`
	WorkerToReadThenWrite float64 `json:"workerToReadThenWrite,omitempty"`
	WorkerToSingle        float64 `json:"workerToSingle,omitempty"`
}

func (r *runner) urlReport(ctx context.Context, res *Result, newReplayed int) *URLReport {
	rep := &URLReport{URL: redactURL(r.cfg.LedgerURL), ClientTimeoutMs: ms(ledgeradapter.DefaultTimeout), NewBalancesReplayed: newReplayed}
	rep.BaselineTimeoutMs = ms(r.cfg.BaselineTimeout)
	if res.Worker.Seconds > 0 {
		rep.CreatesPerSecond = float64(res.Outcomes.Created) / res.Worker.Seconds
	}
	rep.Requests, rep.Statuses, rep.Latency = r.remote.snapshot()
	rep.RequestsPerCreate = ratio(float64(rep.Requests), res.Outcomes.Created)
	rep.PeakInFlight, rep.Timeouts = r.remote.peak.Load(), r.remote.timeouts.Load()
	if !r.cfg.LedgerBaselines {
		return rep
	}
	logf := func(format string, args ...any) { fmt.Fprintf(r.cfg.Log, "bench: "+format+"\n", args...) }
	n := res.Workload.Fresh
	single := r.cfg.SingleInFlight
	if single == 0 {
		single = max(1, int(rep.PeakInFlight))
	}
	p := newLedgerProber(r.cfg.LedgerURL, r.cfg.LedgerName, r.cfg.BaselineTimeout)
	defer p.close()
	logf("ledger baseline single: %d new balances, %d in flight", n, single)
	s := p.single(ctx, n, single)
	logf("ledger baseline read-then-write: %d new balances, %d in flight", n, ReadThenWriteInFlight)
	rtw := p.readThenWrite(ctx, n, ReadThenWriteInFlight)
	logf("ledger baseline bulk: %d new balances, %d a request, %d in flight, parallel", n, BulkBaselineSize, BulkBaselineInFlight)
	b := p.bulk(ctx, n, BulkBaselineSize, BulkBaselineInFlight)
	rep.Single, rep.ReadThenWrite, rep.Bulk = &s, &rtw, &b
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	rep.WorkerToBestWrite = div(rep.CreatesPerSecond, max(s.CreatesPerSecond, b.CreatesPerSecond))
	rep.WorkerToReadThenWrite = div(rep.CreatesPerSecond, rtw.CreatesPerSecond)
	rep.WorkerToSingle = div(rep.CreatesPerSecond, s.CreatesPerSecond)
	return rep
}

// freshReplayed counts the commands for a new balance whose outcome was
// replayed.
func (t *tally) freshReplayed(w *workload) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for key, kt := range t.byKey {
		if i, ok := w.byKey[key]; ok && w.items[i].kind == fresh && kt.class.Load() == classReplayed {
			n++
		}
	}
	return n
}

// redactURL drops a URL's user information.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid URL)"
	}
	return u.Redacted()
}
