package bench

import (
	"context"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// nullLedger is an in-memory ledger with the semantics the handler relies
// on: an absent account is found=false (the ledger's 404), metadata merges
// key by key, and an Idempotency-Key already stored answers a hit for the
// same address and a VALIDATION error for another one (the ledger hashes
// the whole input; the address stands in for it here). It has the batched
// calls too, each one request. Once armed, every request takes latency and
// is metered.
type nullLedger struct {
	meter   *meter
	armed   atomic.Bool
	latency atomic.Int64 // time.Duration

	mu       sync.Mutex
	accounts map[string]map[string]string
	keys     map[string]string // Idempotency-Key → address
}

var _ ledgeradapter.BatchLedger = (*nullLedger)(nil)

func newNullLedger(m *meter) *nullLedger {
	return &nullLedger{meter: m, accounts: map[string]map[string]string{}, keys: map[string]string{}}
}

func (l *nullLedger) arm(latency time.Duration) {
	l.latency.Store(int64(latency))
	l.armed.Store(true)
}

// request is the cost of one request: its latency, metered.
func (l *nullLedger) request(ctx context.Context) error {
	if !l.armed.Load() {
		return nil
	}
	defer l.meter.enter()()
	return sleep(ctx, time.Duration(l.latency.Load()))
}

func (l *nullLedger) GetAccount(ctx context.Context, _, address string) (ledgeradapter.Account, bool, error) {
	if err := l.request(ctx); err != nil {
		return ledgeradapter.Account{}, false, &ledgeradapter.Error{Op: "GetAccount", Err: err}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	acc, ok := l.account(address)
	return acc, ok, nil
}

func (l *nullLedger) ListAccounts(ctx context.Context, _ string, addresses []string) (map[string]ledgeradapter.Account, error) {
	if err := l.request(ctx); err != nil {
		return nil, &ledgeradapter.Error{Op: "ListAccounts", Err: err}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]ledgeradapter.Account, len(addresses))
	for _, a := range addresses {
		if acc, ok := l.account(a); ok {
			out[a] = acc
		}
	}
	return out, nil
}

// account is called with mu held.
func (l *nullLedger) account(address string) (ledgeradapter.Account, bool) {
	md, ok := l.accounts[address]
	if !ok {
		return ledgeradapter.Account{}, false
	}
	return ledgeradapter.Account{Address: address, Metadata: maps.Clone(md)}, true
}

func (l *nullLedger) AddAccountMetadata(ctx context.Context, _, address string, md map[string]string, key string) (ledgeradapter.WriteResult, error) {
	if err := l.request(ctx); err != nil {
		return ledgeradapter.WriteResult{}, &ledgeradapter.Error{Op: "AddAccountMetadata", Err: err}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	hit, err := l.write(address, md, key)
	return ledgeradapter.WriteResult{IdempotencyHit: hit}, err
}

func (l *nullLedger) Bulk(ctx context.Context, _ string, elems []ledgeradapter.BulkAddMetadata) ([]ledgeradapter.BulkResult, error) {
	if err := l.request(ctx); err != nil {
		return nil, &ledgeradapter.Error{Op: "Bulk", Err: err}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	res := make([]ledgeradapter.BulkResult, len(elems))
	for i, el := range elems {
		_, res[i].Err = l.write(el.Address, el.Metadata, el.IdempotencyKey)
	}
	return res, nil
}

// write is called with mu held.
func (l *nullLedger) write(address string, md map[string]string, key string) (bool, error) {
	if key != "" {
		if prev, ok := l.keys[key]; ok {
			if prev != address {
				return false, &ledgeradapter.Error{
					Op: "AddAccountMetadata", StatusCode: http.StatusBadRequest, ErrorCode: ledgeradapter.CodeValidation,
					ErrorMessage: "invalid idempotency hash when using idempotency key '" + key + "'",
				}
			}
			return true, nil
		}
		l.keys[key] = address
	}
	acc := l.accounts[address]
	if acc == nil {
		acc = make(map[string]string, len(md))
		l.accounts[address] = acc
	}
	maps.Copy(acc, md)
	return false, nil
}

// meter counts the requests the ledger receives and the most in flight at
// once.
type meter struct {
	requests, inFlight, peak atomic.Int64
}

// enter records a request that starts; the function it returns, that it
// ends.
func (m *meter) enter() func() {
	m.requests.Add(1)
	n := m.inFlight.Add(1)
	for {
		p := m.peak.Load()
		if n <= p || m.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return func() { m.inFlight.Add(-1) }
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// delayed puts latency in front of every request next serves, and meters
// the requests while armed.
func delayed(next http.Handler, latency time.Duration, armed *atomic.Bool, m *meter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if armed.Load() {
			defer m.enter()()
			if err := sleep(r.Context(), latency); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// Outcome classes the requests at the ledger seam are attributed to.
const (
	classCreated = iota
	classReplayed
	classAlreadyExists
	classOther
	numClasses
)

// keyTally is what the commands of one key cost at the seams, over every
// Handle call (a deferred command is handled again) and delivery.
type keyTally struct {
	gets, adds, claims atomic.Int64
	class              atomic.Int32 // -1 until a Handle call returned an outcome
}

type tallyKey struct{}

// tally wraps the handlers, the ledger and the claimers so that every ledger
// request and claim is counted against the key of the command that made it,
// whichever worker made it.
type tally struct {
	mu    sync.Mutex
	byKey map[string]*keyTally
}

func newTally() *tally { return &tally{byKey: map[string]*keyTally{}} }

func (t *tally) of(key string) *keyTally {
	t.mu.Lock()
	defer t.mu.Unlock()
	kt := t.byKey[key]
	if kt == nil {
		kt = &keyTally{}
		kt.class.Store(-1)
		t.byKey[key] = kt
	}
	return kt
}

func from(ctx context.Context) *keyTally {
	kt, _ := ctx.Value(tallyKey{}).(*keyTally)
	return kt
}

// tallyHandler wraps one worker's handler.
type tallyHandler struct {
	*tally
	next handlers.CreateBalanceHandler
}

func (h tallyHandler) Handle(ctx context.Context, key string, cmd messages.CreateBalance) (handlers.Outcome, error) {
	kt := h.of(key)
	o, err := h.next.Handle(context.WithValue(ctx, tallyKey{}, kt), key, cmd)
	if err == nil {
		class := classOther
		switch {
		case o.Created != nil && o.Created.Replayed:
			class = classReplayed
		case o.Created != nil:
			class = classCreated
		case o.Code() == messages.CodeAlreadyExists:
			class = classAlreadyExists
		}
		kt.class.Store(int32(class))
	}
	return o, err
}

// tallyLedger wraps one worker's ledger (the shared one, or its Batcher).
type tallyLedger struct {
	*tally
	next handlers.Ledger
}

func (l tallyLedger) GetAccount(ctx context.Context, ledger, address string) (ledgeradapter.Account, bool, error) {
	if kt := from(ctx); kt != nil {
		kt.gets.Add(1)
	}
	return l.next.GetAccount(ctx, ledger, address)
}

func (l tallyLedger) AddAccountMetadata(ctx context.Context, ledger, address string, md map[string]string, key string) (ledgeradapter.WriteResult, error) {
	if kt := from(ctx); kt != nil {
		kt.adds.Add(1)
	}
	return l.next.AddAccountMetadata(ctx, ledger, address, md, key)
}

// tallyClaimer wraps one worker's claims binding.
type tallyClaimer struct {
	*tally
	next handlers.Claimer
}

func (c tallyClaimer) Claim(ctx context.Context, ledger, account, key string) error {
	if kt := from(ctx); kt != nil {
		kt.claims.Add(1)
	}
	return c.next.Claim(ctx, ledger, account, key)
}

// LedgerRequests are the ledger calls the handler made, counted at the
// handlers.Ledger seam, the requests that reached the ledger, and the claims
// the handler took.
type LedgerRequests struct {
	Total       int64 `json:"total"`
	GetAccount  int64 `json:"getAccount"`
	AddMetadata int64 `json:"addMetadata"`
	// HTTP counts the requests the embedded ledger's HTTP server received
	// (0 with the null ledger); without batching it equals Total.
	HTTP int64 `json:"http"`
	// Requests counts what reached the ledger (HTTP requests, or calls to
	// the null ledger), a batched request once; RequestsPerCommand divides
	// it by the stored commands. Without batching it equals Total.
	Requests           int64   `json:"requests"`
	RequestsPerCommand float64 `json:"requestsPerCommand"`
	// PeakInFlight is the most ledger requests in flight at once.
	PeakInFlight int64 `json:"peakInFlight"`
	// PerCommand is Total over the stored commands.
	PerCommand float64 `json:"perCommand"`
	// PerCreate, PerReplay and PerConflict divide the requests of the
	// commands that ended created, replayed and ALREADY_EXISTS by their
	// number (0 when there were none).
	PerCreate   float64 `json:"perCreate"`
	PerReplay   float64 `json:"perReplay"`
	PerConflict float64 `json:"perConflict"`
	// Claims is how many claims were taken; ClaimsPerCreate divides those of
	// created commands by their number.
	Claims          int64   `json:"claims"`
	ClaimsPerCreate float64 `json:"claimsPerCreate"`
}

// outcomeCounts are the commands by the outcome their last Handle call gave.
type outcomeCounts [numClasses]int

func (t *tally) summary(stored int) (LedgerRequests, outcomeCounts) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var r LedgerRequests
	var n outcomeCounts
	var reqs, claims [numClasses]int64
	for _, kt := range t.byKey {
		g, a, c := kt.gets.Load(), kt.adds.Load(), kt.claims.Load()
		r.GetAccount += g
		r.AddMetadata += a
		r.Claims += c
		class := int(kt.class.Load())
		if class < 0 {
			class = classOther
		}
		n[class]++
		reqs[class] += g + a
		claims[class] += c
	}
	r.Total = r.GetAccount + r.AddMetadata
	r.PerCommand = ratio(float64(r.Total), stored)
	r.PerCreate = ratio(float64(reqs[classCreated]), n[classCreated])
	r.PerReplay = ratio(float64(reqs[classReplayed]), n[classReplayed])
	r.PerConflict = ratio(float64(reqs[classAlreadyExists]), n[classAlreadyExists])
	r.ClaimsPerCreate = ratio(float64(claims[classCreated]), n[classCreated])
	return r, n
}

func ratio(a float64, b int) float64 {
	if b == 0 {
		return 0
	}
	return a / float64(b)
}
