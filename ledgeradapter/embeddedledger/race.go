package embeddedledger

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"
)

// errRacingCreate is the failure of a write that raced another write
// creating the same account: the real ledger answers it 500 INTERNAL.
//
// In the real ledger every write is a PostgreSQL transaction that inserts a
// missing account before it appends its log (CONTRACT §3, §4). When two
// transactions both find an account missing, the second one's insert waits
// for the first and then fails on the accounts' unique index; nothing maps
// that error, so the answer is a generic 500, and a retry of the same
// request then succeeds (an Idempotency-Hit when it carries the winner's
// key). Writes here run one after another, so the race cannot happen by
// itself; raceTracker reproduces its outcome instead: a write "began" when
// its request arrived, and it loses when the account it writes was created
// by another write that committed after that moment, or that sits, not yet
// committed, in the same SQLite transaction.
//
// A write here also takes far less time than the real one's transaction
// (about 25 ms alone on PostgreSQL), so requests sent together over HTTP
// would seldom overlap at all. A write that creates an account therefore
// counts as open for at least the race window from its arrival: a write
// arriving within it loses too, and the creator's answer is held until the
// window has passed, so that no client can read it and then send a write
// that would lose by the window alone.
var errRacingCreate = errors.New("racing first write: the account was created by a concurrent write")

// accountKey names an account across ledgers.
type accountKey struct {
	ledgerID int64
	address  string
}

// defaultRaceWindow is how long a write that creates an account counts as
// open at least (see errRacingCreate): short beside the real ledger's
// transaction, long enough for requests sent together to overlap.
const defaultRaceWindow = 5 * time.Millisecond

// raceTracker remembers which accounts recent commits created, for as long
// as a write that arrived before such a commit, or within its creator's race
// window, is still pending. Its memory is bounded by the writes in flight:
// with none pending it holds nothing.
type raceTracker struct {
	mu     sync.Mutex
	window time.Duration
	// seq counts commits that created accounts; a write's arrival holds the
	// value of seq when it arrived.
	seq uint64
	// pending counts the writes in flight by arrival seq, with the time the
	// first of them arrived.
	pending map[uint64]*pendingArrivals
	// created maps an account to the commit that created it.
	created map[accountKey]creation
	// batches lists created accounts by commit, oldest first, to forget
	// them once no pending write arrived before their commit or within
	// their creators' windows.
	batches []createdBatch
}

// arrival is when a write's request arrived: the commits seen by then, and
// the time.
type arrival struct {
	seq    uint64
	at     time.Time
	window time.Duration
}

type pendingArrivals struct {
	n     int
	first time.Time
}

// creation is the commit that created an account, and the end of its
// creator's race window.
type creation struct {
	seq   uint64
	until time.Time
}

type createdBatch struct {
	seq      uint64
	until    time.Time // the latest of its accounts' windows
	accounts []accountKey
}

func newRaceTracker(window time.Duration) *raceTracker {
	return &raceTracker{window: window, pending: map[uint64]*pendingArrivals{}, created: map[accountKey]creation{}}
}

// arrive registers a write when its request arrives and returns its
// arrival; depart must follow once the write has been answered.
//
// windowed tells a request that came over a connection, whose write gets
// the race window, from one handed over in process (Transport), whose
// client pays no latency for an emulation meant for HTTP clients: it races
// only the writes it truly overlaps.
func (t *raceTracker) arrive(windowed bool) arrival {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := arrival{seq: t.seq, at: time.Now()}
	if windowed {
		a.window = t.window
	}
	p := t.pending[a.seq]
	if p == nil {
		p = &pendingArrivals{first: a.at}
		t.pending[a.seq] = p
	}
	p.n++
	return a
}

func (t *raceTracker) depart(a arrival) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.pending[a.seq]; p != nil {
		if p.n--; p.n <= 0 {
			delete(t.pending, a.seq)
		}
	}
	t.forget()
}

// until is the end of the race window of a write that arrived at a.
func (t *raceTracker) until(a arrival) time.Time { return a.at.Add(a.window) }

// createdSince reports whether the account was created by a write the one
// that arrived at a raced: committed after a, or still within its window
// when a arrived.
func (t *raceTracker) createdSince(k accountKey, a arrival) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.created[k]
	return ok && (c.seq > a.seq || a.at.Before(c.until))
}

// linger holds the answer of a write that created an account until its race
// window has passed (or ctx ends).
func (t *raceTracker) linger(ctx context.Context, a arrival) {
	d := time.Until(t.until(a))
	if d <= 0 {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
}

// committed records the accounts a commit created. It runs while the
// committing writes are still pending, under the write lock, so no write can
// look at the accounts between the commit and this call.
func (t *raceTracker) committed(accounts []createdAccount) {
	if len(accounts) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seq++
	b := createdBatch{seq: t.seq, accounts: make([]accountKey, len(accounts))}
	for i, c := range accounts {
		t.created[c.key] = creation{seq: t.seq, until: c.until}
		b.accounts[i] = c.key
		if c.until.After(b.until) {
			b.until = c.until
		}
	}
	t.batches = append(t.batches, b)
	t.forget()
}

// forget drops the accounts created at or before the oldest pending arrival
// and whose windows ended before it: every write still pending arrived
// after their commit and outside their windows.
func (t *raceTracker) forget() {
	oldest, first, any := uint64(0), time.Time{}, false
	for s, p := range t.pending {
		if !any || s < oldest {
			oldest, any = s, true
		}
		if first.IsZero() || p.first.Before(first) {
			first = p.first
		}
	}
	n := 0
	for _, b := range t.batches {
		if any && (b.seq > oldest || first.Before(b.until)) {
			break
		}
		for _, k := range b.accounts {
			if t.created[k].seq == b.seq {
				delete(t.created, k)
			}
		}
		n++
	}
	if n > 0 {
		t.batches = append(t.batches[:0], t.batches[n:]...)
	}
}

// txCreations tracks the accounts created inside one SQLite transaction
// that are not committed yet, and by which write: a write that is
// concurrent with their creator (another request of a group commit, another
// element of a parallel bulk) must not see them as existing.
type txCreations struct {
	by   map[accountKey]uint64 // account → origin of the write that created it
	list []createdAccount
}

// createdAccount is an account created in a transaction, with the end of
// its creator's race window.
type createdAccount struct {
	key   accountKey
	until time.Time
}

func (c *txCreations) add(k accountKey, origin uint64, until time.Time) {
	if c.by == nil {
		c.by = map[accountKey]uint64{}
	}
	if _, ok := c.by[k]; !ok {
		c.list = append(c.list, createdAccount{key: k, until: until})
	}
	c.by[k] = origin
}

// truncate forgets the accounts created after the first n.
func (c *txCreations) truncate(n int) {
	for _, a := range c.list[n:] {
		delete(c.by, a.key)
	}
	c.list = c.list[:n]
}

type arrivalKey struct{}

// withArrival registers a write request's arrival for the handlers beneath;
// the returned func departs it, once the request has been answered.
func (l *Ledger) withArrival(r *http.Request) (*http.Request, func()) {
	a := l.races.arrive(r.RemoteAddr != inProcessAddr)
	return r.WithContext(context.WithValue(r.Context(), arrivalKey{}, a)), func() { l.races.depart(a) }
}

// arrivalOf returns the arrival of the request ctx belongs to, registering
// one (to depart with the returned func) for a call made without a request.
func (l *Ledger) arrivalOf(ctx context.Context) (arrival, func()) {
	if a, ok := ctx.Value(arrivalKey{}).(arrival); ok {
		return a, func() {}
	}
	a := l.races.arrive(false)
	return a, func() { l.races.depart(a) }
}

// byOther reports whether a write other than origin created the account in
// this transaction.
func (c *txCreations) byOther(k accountKey, origin uint64) bool {
	o, ok := c.by[k]
	return ok && o != origin
}
