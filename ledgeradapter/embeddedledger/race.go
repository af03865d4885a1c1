package embeddedledger

import (
	"errors"
	"sync"
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
var errRacingCreate = errors.New("racing first write: the account was created by a concurrent write")

// accountKey names an account across ledgers.
type accountKey struct {
	ledgerID int64
	address  string
}

// raceTracker remembers which accounts recent commits created, for as long
// as a write that arrived before such a commit is still pending. Its memory
// is bounded by the writes in flight: with none pending it holds nothing.
type raceTracker struct {
	mu sync.Mutex
	// seq counts commits that created accounts; a write's arrival is the
	// value of seq when it arrived.
	seq uint64
	// pending counts the writes in flight by arrival.
	pending map[uint64]int
	// created maps an account to the commit that created it.
	created map[accountKey]uint64
	// batches lists created accounts by commit, oldest first, to forget
	// them once no pending write arrived before their commit.
	batches []createdBatch
}

type createdBatch struct {
	seq      uint64
	accounts []accountKey
}

func newRaceTracker() *raceTracker {
	return &raceTracker{pending: map[uint64]int{}, created: map[accountKey]uint64{}}
}

// arrive registers a write when its request arrives and returns its
// arrival; depart must follow once the write has committed or failed.
func (t *raceTracker) arrive() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.seq
	t.pending[s]++
	return s
}

func (t *raceTracker) depart(arrival uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending[arrival]--; t.pending[arrival] <= 0 {
		delete(t.pending, arrival)
	}
	t.forget()
}

// createdSince reports whether a commit after arrival created the account.
func (t *raceTracker) createdSince(k accountKey, arrival uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.created[k]
	return ok && s > arrival
}

// committed records the accounts a commit created. It runs while the
// committing writes are still pending, under the write lock, so no write can
// look at the accounts between the commit and this call.
func (t *raceTracker) committed(accounts []accountKey) {
	if len(accounts) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seq++
	for _, k := range accounts {
		t.created[k] = t.seq
	}
	t.batches = append(t.batches, createdBatch{seq: t.seq, accounts: accounts})
	t.forget()
}

// forget drops the accounts created at or before the oldest pending
// arrival: every write still pending arrived after their commit.
func (t *raceTracker) forget() {
	oldest, any := uint64(0), false
	for s := range t.pending {
		if !any || s < oldest {
			oldest, any = s, true
		}
	}
	n := 0
	for _, b := range t.batches {
		if any && b.seq > oldest {
			break
		}
		for _, k := range b.accounts {
			if t.created[k] == b.seq {
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
	list []accountKey
}

func (c *txCreations) add(k accountKey, origin uint64) {
	if c.by == nil {
		c.by = map[accountKey]uint64{}
	}
	if _, ok := c.by[k]; !ok {
		c.list = append(c.list, k)
	}
	c.by[k] = origin
}

// truncate forgets the accounts created after the first n.
func (c *txCreations) truncate(n int) {
	for _, k := range c.list[n:] {
		delete(c.by, k)
	}
	c.list = c.list[:n]
}

// byOther reports whether a write other than origin created the account in
// this transaction.
func (c *txCreations) byOther(k accountKey, origin uint64) bool {
	o, ok := c.by[k]
	return ok && o != origin
}
