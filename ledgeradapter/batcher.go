package ledgeradapter

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of BatcherConfig.
const (
	// DefaultBatching says whether a Batcher stands between the worker
	// and the ledger by default (wallets-worker run --ledger-batch).
	DefaultBatching = true
	// DefaultBatchingConcurrency is how many commands a worker should have
	// in flight in front of a Batcher (run's --concurrency default with
	// --ledger-batch): against a real ledger a command spends about a
	// second in two requests under load, and a few hundred writes in
	// flight are what its ceiling takes. Without a Batcher each command
	// holds a request, and the worker's own default applies.
	DefaultBatchingConcurrency = 512
	// DefaultInProcessConcurrency is the same for a ledger in the worker's
	// own process (run's embedded ledger, bench's null and embedded ones),
	// which answers in well under a millisecond: more commands in flight
	// would add no throughput and cost memory (each a goroutine stack and
	// its buffers) that a process under a soft memory limit pays back in
	// garbage collection. All-embedded run fed 20,000 creates by another
	// process (five runs each, alternated): 4,914-5,826 creates/s at 512,
	// 6,302-7,246 at 128, 5,652-6,407 at 64.
	DefaultInProcessConcurrency = 128
	// DefaultBatchWindow is how long a call may wait for others to share
	// its request when a request of its kind is already in flight.
	DefaultBatchWindow = 2 * time.Millisecond
	// DefaultBatchMax is the most calls one request carries.
	DefaultBatchMax = MaxBulkSize
	// DefaultWriteBatchMax is the most writes one bulk carries: what the
	// ledger runs at once of a parallel bulk (its --bulk-parallel, 10 by
	// default on v2.4.12). The rest of a larger bulk waits inside the
	// ledger, so it adds latency and no throughput: measured on v2.4.12,
	// bulks of 10, 25 and 50 with 8 to 32 in flight all got 380-450
	// writes a second through, and 2,000 creates through the worker ran
	// 10-15% faster with bulks of 10 than of up to 100 (the last ones
	// waited seconds in bulks of 100).
	DefaultWriteBatchMax = 10
	// DefaultWriteFloor is how many writes a Batcher keeps in flight at
	// least, whatever the throughput probes say, while it has them to send:
	// below about 20 operations at its database the real ledger's
	// PostgreSQL pool (no idle connection kept by default) opens a new
	// connection per write, at several times the CPU. Only a timeout, a
	// 5xx or a 429 takes the write requests below it.
	DefaultWriteFloor = 24
	// DefaultBatchInFlight is how many ledger requests a Batcher keeps in
	// flight at most, reads and writes together; within it, each kind's
	// limit adapts (Limiter).
	DefaultBatchInFlight = 64
)

// BatchingConcurrency is how many commands a worker should have in flight
// in front of a Batcher: DefaultInProcessConcurrency when the ledger runs in
// its process and answers at once, DefaultBatchingConcurrency otherwise.
func BatchingConcurrency(inProcess bool) int {
	if inProcess {
		return DefaultInProcessConcurrency
	}
	return DefaultBatchingConcurrency
}

// BatchLedger is what a Batcher sends its requests to; *Client implements
// it.
type BatchLedger interface {
	GetAccount(ctx context.Context, ledger, address string) (Account, bool, error)
	AddAccountMetadata(ctx context.Context, ledger, address string, metadata map[string]string, idempotencyKey string) (WriteResult, error)
	ListAccounts(ctx context.Context, ledger string, addresses []string) (map[string]Account, error)
	Bulk(ctx context.Context, ledger string, elems []BulkAddMetadata) ([]BulkResult, error)
}

// BatcherConfig configures a Batcher. Zero values take the defaults.
type BatcherConfig struct {
	// Window is how long a call waits for others to join its request while
	// a request of the same kind (read or write, same ledger) is in flight
	// (default DefaultBatchWindow). A call that finds none in flight is
	// sent at once: a lone command is never delayed by the window.
	Window time.Duration
	// MaxBatch caps the calls of one request (default and at most
	// DefaultBatchMax, the ledger's BULK_MAX_SIZE and page size). 1 turns
	// coalescing off and leaves a limiter of requests in flight.
	MaxBatch int
	// MaxWriteBatch caps the calls of one write request below MaxBatch
	// (default DefaultWriteBatchMax).
	MaxWriteBatch int
	// MaxInFlight caps the ledger requests in flight, reads and writes
	// together (default DefaultBatchInFlight). Within it, reads and writes
	// each have a limit that adapts to the latency and failures of their
	// requests (see Limiter). Calls that arrive while their kind is at its
	// limit wait and leave together when a slot frees.
	MaxInFlight int
	// Limiter shapes the adaptive limit of each kind. Its Max defaults to
	// MaxInFlight and may not exceed it; Min = Max fixes the limit.
	Limiter LimiterConfig
}

func (c *BatcherConfig) setDefaults() {
	if c.Window == 0 {
		c.Window = DefaultBatchWindow
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultBatchMax
	}
	if c.MaxWriteBatch == 0 {
		c.MaxWriteBatch = DefaultWriteBatchMax
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultBatchInFlight
	}
	if c.Limiter.Max == 0 {
		c.Limiter.Max = c.MaxInFlight
	}
	c.Limiter.setDefaults()
}

// Validate reports every problem of c (after defaults) at once.
func (c BatcherConfig) Validate() error {
	c.setDefaults()
	var errs []error
	if c.Window < 0 {
		errs = append(errs, fmt.Errorf("ledgeradapter: batch window %s is negative", c.Window))
	}
	if c.MaxBatch < 1 || c.MaxBatch > DefaultBatchMax {
		errs = append(errs, fmt.Errorf("ledgeradapter: batch max %d: want 1 to %d", c.MaxBatch, DefaultBatchMax))
	}
	if c.MaxWriteBatch < 1 || c.MaxWriteBatch > DefaultBatchMax {
		errs = append(errs, fmt.Errorf("ledgeradapter: write batch max %d: want 1 to %d", c.MaxWriteBatch, DefaultBatchMax))
	}
	if c.MaxInFlight < 1 {
		errs = append(errs, fmt.Errorf("ledgeradapter: requests in flight %d: want at least 1", c.MaxInFlight))
	}
	if c.Limiter.Max > c.MaxInFlight {
		errs = append(errs, fmt.Errorf("ledgeradapter: limiter max %d is above the requests in flight %d", c.Limiter.Max, c.MaxInFlight))
	}
	errs = append(errs, c.Limiter.Validate())
	return errors.Join(errs...)
}

// Batcher offers GetAccount and AddAccountMetadata, with the results and
// errors of *Client's, and sends concurrent calls together: reads as one
// ListAccounts, writes as one Bulk of ADD_METADATA elements, each element
// with its own idempotency key. A batch of one call goes out as the single
// call, so a lone command makes exactly the requests it makes without a
// Batcher.
//
// How many requests are in flight adapts: reads and writes each have a
// Limiter, fed with the throughput and the failures of their requests, so
// that a ledger which gets more through with more requests in flight gets
// them, and one that does not, or is overloaded, gets fewer, hence larger
// batches; a batch is also cut when its requests near their timeout. Reads
// wait for a full batch while a read is in flight (see ready).
//
// Every call keeps its own outcome: an element that fails fails only its
// call, with the error the single call would have had; a request that
// fails as a whole fails each of its calls with that error, and is never
// sent again by the Batcher (its callers retry, each on its own, with the
// idempotency key that makes a retry safe). A call whose
// context ends returns at once with that context's error (retryable); if
// it was not sent yet it never is, and a request whose every call has
// returned is cancelled; a call whose deadline is nearer than twice the
// time its request is expected to take fails at once with ErrNoTimeLeft
// instead of being sent. A request runs on the context of its first call
// without its cancellation (its values, a trace for one, travel with it),
// bounded by the client's timeout for its size.
//
// A write with the idempotency key and input of one already queued or in
// flight (two deliveries of one command, say) waits for it and, once it has
// succeeded, returns IdempotencyHit without a request: what the ledger would
// answer. One difference with *Client remains: the ledger's bulk answer does
// not say whether an element was an idempotency hit, so a write sent in a
// bulk of two or more reports IdempotencyHit false when the ledger already
// had it from an earlier request (Client.Bulk); AddAccountMetadataAlone
// sends a write whose hit matters in a request of its own.
type Batcher struct {
	next BatchLedger
	cfg  BatcherConfig

	// limiters are the adaptive limits of reads and writes.
	limiters [numKinds]*Limiter

	mu       sync.Mutex
	queues   map[queueKey]*queue
	inFlight int
	// kindInFlight counts the requests in flight by kind; lastDone is when
	// one of the kind last came back.
	kindInFlight [numKinds]int
	lastDone     [numKinds]time.Time
	// flights are the writes queued or in flight, by ledger and
	// idempotency key: the same write arriving meanwhile waits for it.
	flights map[flightKey]*flight

	stats batcherCounters
}

// NewBatcher returns a Batcher sending to next.
func NewBatcher(next BatchLedger, cfg BatcherConfig) (*Batcher, error) {
	floor := cfg.Limiter.Floor // 0: the writes get DefaultWriteFloor
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if next == nil {
		return nil, errors.New("ledgeradapter: a Batcher needs a ledger")
	}
	b := &Batcher{next: next, cfg: cfg, queues: map[queueKey]*queue{}, flights: map[flightKey]*flight{}}
	for k := range b.limiters {
		lc := cfg.Limiter
		if k == kindRead {
			// No small first batches of reads: a list of a hundred costs
			// the ledger what a list of one does.
			lc.FirstBatch = cfg.MaxBatch
		}
		if k == kindWrite && floor == 0 {
			// The write floor in requests of full bulks, within the bounds.
			per := min(cfg.MaxBatch, cfg.MaxWriteBatch)
			lc.Floor = min(lc.Max, max(lc.Min, (DefaultWriteFloor+per-1)/per))
			lc.Initial = max(lc.Initial, lc.Floor)
		}
		l, err := NewLimiter(lc)
		if err != nil {
			return nil, err
		}
		b.limiters[k] = l
	}
	return b, nil
}

// ErrNoTimeLeft is what a call gets, wrapped in an *Error, when its
// context's deadline would come before the answer to its request: it is
// not sent. It matches context.DeadlineExceeded too, and is retryable: the
// command comes back with a deadline of its own.
var ErrNoTimeLeft = fmt.Errorf("ledgeradapter: not sent, too little time left: %w", context.DeadlineExceeded)

// noTimeLeftFactor is how many times the expected time of its request a
// call must have left to be sent.
const noTimeLeftFactor = 2

// Request kinds, each with its own Limiter.
const (
	kindRead = iota
	kindWrite
	numKinds
)

func (k queueKey) kind() int {
	if k.read {
		return kindRead
	}
	return kindWrite
}

// Config returns the configuration in force, defaults applied. Its Limiter
// is the writes' but for the floor: the writes' has a floor of
// DefaultWriteFloor writes (in full bulks) unless Limiter.Floor was set, and
// starts at least there; the reads' has no first-batch cap.
func (b *Batcher) Config() BatcherConfig { return b.cfg }

// BatcherStats counts a Batcher's calls and the ledger requests that
// carried them.
type BatcherStats struct {
	Reads, Writes               int64 // calls
	ReadRequests, WriteRequests int64 // requests sent, single or batched
	// PeakInFlight is the most requests that were in flight at once.
	PeakInFlight int
	// Timeouts counts the requests that timed out (ErrTimeout); Overloads
	// those that timed out, got no answer, a 5xx or a 429.
	Timeouts, Overloads int64
	// NoTimeLeft counts the calls not sent because their deadline came
	// before their request's answer would (ErrNoTimeLeft).
	NoTimeLeft int64
	// ReadLimit and WriteLimit are the adaptive limits of requests in
	// flight now; ReadBatch and WriteBatch the most calls a request of the
	// kind carries now.
	ReadLimit, WriteLimit int
	ReadBatch, WriteBatch int
	// ReadsInFlight and WritesInFlight are the requests of each kind in
	// flight now; ReadsWaiting and WritesWaiting the calls queued for a
	// request of their kind.
	ReadsInFlight, WritesInFlight int
	ReadsWaiting, WritesWaiting   int
}

type batcherCounters struct {
	reads, writes, readRequests, writeRequests atomic.Int64
	timeouts, overloads, noTimeLeft            atomic.Int64
	peak                                       int // under mu
}

// Stats returns the counters so far.
func (b *Batcher) Stats() BatcherStats {
	b.mu.Lock()
	peak := b.stats.peak
	var waiting [numKinds]int
	for _, q := range b.queues {
		waiting[q.key.kind()] += len(q.pending)
	}
	inFlight := b.kindInFlight
	b.mu.Unlock()
	return BatcherStats{
		ReadsInFlight: inFlight[kindRead], WritesInFlight: inFlight[kindWrite],
		ReadsWaiting: waiting[kindRead], WritesWaiting: waiting[kindWrite],
		Reads: b.stats.reads.Load(), Writes: b.stats.writes.Load(),
		ReadRequests: b.stats.readRequests.Load(), WriteRequests: b.stats.writeRequests.Load(),
		PeakInFlight: peak,
		Timeouts:     b.stats.timeouts.Load(), Overloads: b.stats.overloads.Load(), NoTimeLeft: b.stats.noTimeLeft.Load(),
		ReadLimit: b.limiters[kindRead].Limit(), WriteLimit: b.limiters[kindWrite].Limit(),
		ReadBatch: b.batchLimit(kindRead), WriteBatch: b.batchLimit(kindWrite),
	}
}

// batchLimit is the most calls a request of kind k carries now.
func (b *Batcher) batchLimit(k int) int {
	if k == kindWrite {
		return b.limiters[k].BatchLimit(min(b.cfg.MaxBatch, b.cfg.MaxWriteBatch))
	}
	return b.limiters[k].BatchLimit(b.cfg.MaxBatch)
}

// GetAccount is Client.GetAccount, sent with the concurrent ones.
func (b *Batcher) GetAccount(ctx context.Context, ledger, address string) (Account, bool, error) {
	const op = "GetAccount"
	if err := errors.Join(ValidateLedgerName(ledger), ValidateAddress(address)); err != nil {
		return Account{}, false, notSent(op, err)
	}
	c := &call{address: address}
	if err := b.await(ctx, op, queueKey{read: true, ledger: ledger}, c); err != nil {
		return Account{}, false, err
	}
	return c.account, c.found, c.err
}

// AddAccountMetadata is Client.AddAccountMetadata, sent with the concurrent
// ones (see Batcher for IdempotencyHit).
func (b *Batcher) AddAccountMetadata(ctx context.Context, ledger, address string, metadata map[string]string, idempotencyKey string) (WriteResult, error) {
	const op = "AddAccountMetadata"
	if err := errors.Join(ValidateLedgerName(ledger), ValidateAddress(address), validateIdempotencyKey(idempotencyKey)); err != nil {
		return WriteResult{}, notSent(op, err)
	}
	c := &call{address: address, metadata: metadata, key: idempotencyKey}
	if err := b.await(ctx, op, queueKey{read: false, ledger: ledger}, c); err != nil {
		return WriteResult{}, err
	}
	return c.write, c.err
}

// AddAccountMetadataAlone is AddAccountMetadata in a request of its own,
// under the writes' limit like the others: its answer then says whether the
// write was an idempotency hit, which a bulk's answer does not. For a write
// whose replay is known only by that hit (an update of a wallet's metadata,
// retried after its first answer was lost).
func (b *Batcher) AddAccountMetadataAlone(ctx context.Context, ledger, address string, metadata map[string]string, idempotencyKey string) (WriteResult, error) {
	const op = "AddAccountMetadata"
	if err := errors.Join(ValidateLedgerName(ledger), ValidateAddress(address), validateIdempotencyKey(idempotencyKey)); err != nil {
		return WriteResult{}, notSent(op, err)
	}
	c := &call{address: address, metadata: metadata, key: idempotencyKey}
	if err := b.await(ctx, op, queueKey{read: false, ledger: ledger, alone: true}, c); err != nil {
		return WriteResult{}, err
	}
	return c.write, c.err
}

// DryRunAccountMetadata is Client.DryRunAccountMetadata, sent at once and
// alone: a dry run writes nothing, so it neither shares a bulk (a bulk
// element has no dry run) nor waits behind the writes' limit. The Batcher's
// ledger must make dry runs (a *Client does); another gets an error that is
// not retryable.
func (b *Batcher) DryRunAccountMetadata(ctx context.Context, ledger, address string, metadata map[string]string, idempotencyKey string) (WriteResult, error) {
	d, ok := b.next.(interface {
		DryRunAccountMetadata(ctx context.Context, ledger, address string, metadata map[string]string, idempotencyKey string) (WriteResult, error)
	})
	if !ok {
		return WriteResult{}, notSent("DryRunAccountMetadata", errors.New("ledgeradapter: the Batcher's ledger makes no dry runs"))
	}
	return d.DryRunAccountMetadata(ctx, ledger, address, metadata, idempotencyKey)
}

// call is one GetAccount or AddAccountMetadata waiting for its request.
type call struct {
	ctx      context.Context
	address  string
	metadata map[string]string
	key      string
	arrived  time.Time

	// state moves from pending to sent (by the dispatcher) or to abandoned
	// (by the caller whose context ended), once.
	state atomic.Int32
	batch *batch // set when sent
	// queue is the queue the call was asked for: a follower that is queued
	// again when its flight fails goes back to its own (a write sent alone
	// stays alone), not its leader's.
	queue queueKey
	done  chan struct{}
	// flight is the flight this write leads, if any.
	flight *flight

	// Results, written before done is closed.
	account Account
	found   bool
	write   WriteResult
	err     error
}

const (
	callPending int32 = iota
	callSent
	callAbandoned
)

// batch is the calls of one request.
type batch struct {
	calls  []*call
	live   atomic.Int32 // calls whose caller still waits
	ctx    context.Context
	cancel context.CancelFunc
	// stale says it went because the expected time was stale (dispatch).
	stale bool
}

type queueKey struct {
	read   bool
	ledger string
	// alone: writes sent one to a request (AddAccountMetadataAlone).
	alone bool
}

type flightKey struct {
	ledger, idempotencyKey string
}

// flight is a write with an idempotency key, queued or in flight, and the
// calls of the same write waiting for it.
type flight struct {
	key       flightKey
	leader    *call
	followers []*call
}

// queue holds the calls of one kind and ledger not sent yet.
type queue struct {
	key      queueKey
	pending  []*call
	expired  bool        // the window of pending[0] has passed
	timer    *time.Timer // fires at the end of that window
	gen      uint64      // tells a stale timer from the current one
	inFlight int
}

// await queues c and waits for its result or the end of ctx.
func (b *Batcher) await(ctx context.Context, op string, key queueKey, c *call) error {
	if ctx.Err() != nil {
		return &Error{Op: op, Err: ctxError(ctx)}
	}
	c.ctx, c.done = ctx, make(chan struct{})
	b.enqueue(key, c)
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
	}
	select {
	case <-c.done: // answered meanwhile: keep the answer
		return nil
	default:
	}
	if !c.state.CompareAndSwap(callPending, callAbandoned) {
		// Sent: the request goes on for the others; it is cancelled once
		// no caller waits for it.
		if bt := c.batch; bt != nil && bt.live.Add(-1) == 0 {
			bt.cancel()
		}
	}
	return &Error{Op: op, Err: ctxError(ctx)}
}

func (b *Batcher) enqueue(key queueKey, c *call) {
	b.mu.Lock()
	defer b.mu.Unlock()
	// Counted once queued, so that a caller who sees the count sees the
	// call queued too.
	if key.read {
		b.stats.reads.Add(1)
	} else {
		b.stats.writes.Add(1)
	}
	b.enqueueLocked(key, c)
	b.dispatch()
}

// enqueueLocked queues c, or makes it wait for the same write in flight.
// Called with mu held.
func (b *Batcher) enqueueLocked(key queueKey, c *call) {
	c.queue = key
	if !key.read && c.key != "" {
		fk := flightKey{key.ledger, c.key}
		if f := b.flights[fk]; f != nil {
			if l := f.leader; l.address == c.address && equalMaps(l.metadata, c.metadata) {
				f.followers = append(f.followers, c)
				return
			}
			// Same key, other input: the ledger answers that one itself.
		} else {
			c.flight = &flight{key: fk, leader: c}
			b.flights[fk] = c.flight
		}
	}
	q := b.queues[key]
	if q == nil {
		q = &queue{key: key}
		b.queues[key] = q
	}
	c.arrived = time.Now()
	q.pending = append(q.pending, c)
	if len(q.pending) == 1 {
		b.armWindow(q)
	}
}

// land ends the flight c leads, if any: on success its followers are
// idempotency hits; otherwise (a failure, or c never sent because its
// caller left) they are queued again, the first leading a new flight.
// Called with mu held.
func (b *Batcher) land(c *call, sent bool) {
	f := c.flight
	if f == nil {
		return
	}
	c.flight = nil
	delete(b.flights, f.key)
	for _, w := range f.followers {
		if sent && c.err == nil {
			w.write = WriteResult{IdempotencyHit: true}
			close(w.done)
			continue
		}
		b.enqueueLocked(w.queue, w)
	}
}

// armWindow starts the window of q.pending[0]. Called with mu held.
func (b *Batcher) armWindow(q *queue) {
	q.gen++
	if q.timer != nil {
		q.timer.Stop()
		q.timer = nil
	}
	left := b.cfg.Window - time.Since(q.pending[0].arrived)
	q.expired = left <= 0
	if q.expired {
		return
	}
	gen := q.gen
	q.timer = time.AfterFunc(left, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if q.gen == gen {
			q.expired, q.timer = true, nil
			b.dispatch()
		}
	})
}

// ready says whether q's pending calls should leave as soon as a slot is
// free: there are enough to fill a request, or nothing of their kind is in
// flight to wait behind, or, for writes, they have waited their window.
// Reads wait for their batch to fill as long as a read of their ledger is
// in flight: a list-accounts request costs the real ledger about the same
// whether it asks for one account or a hundred (it scans the accounts
// table), so fewer and fuller ones leave it more for the writes.
func (b *Batcher) ready(q *queue, batchLimit int) bool {
	return len(q.pending) > 0 && (len(q.pending) >= q.batchLimit(batchLimit) || q.inFlight == 0 || (q.expired && !q.key.read))
}

// batchLimit is how many calls one request of q carries: limit, or one for
// writes sent alone.
func (q *queue) batchLimit(limit int) int {
	if q.key.alone {
		return 1
	}
	return limit
}

// dispatch sends ready queues, the oldest call first, while their kind has
// a free slot. Called with mu held.
func (b *Batcher) dispatch() {
	var limits, batchLimits [numKinds]int
	for k := range numKinds {
		limits[k], batchLimits[k] = b.limiters[k].Limit(), b.batchLimit(k)
	}
	var pressed [numKinds]bool
	defer func() {
		for k, p := range pressed {
			if p {
				b.limiters[k].Pressed()
			}
		}
	}()
	for {
		var q *queue
		for _, c := range b.queues {
			k := c.key.kind()
			if !b.ready(c, batchLimits[k]) {
				continue
			}
			if b.kindInFlight[k] >= limits[k] {
				pressed[k] = true // its own limit held it back
				continue
			}
			if b.inFlight >= b.cfg.MaxInFlight {
				continue
			}
			if q == nil || c.pending[0].arrived.Before(q.pending[0].arrived) {
				q = c
			}
		}
		if q == nil {
			return
		}
		n := min(len(q.pending), q.batchLimit(batchLimits[q.key.kind()]))
		taken := q.pending[:n]
		q.pending = append(q.pending[:0:0], q.pending[n:]...)
		if len(q.pending) > 0 {
			b.armWindow(q)
		} else if q.timer != nil {
			q.gen++
			q.timer.Stop()
			q.timer = nil
		}

		// A call whose deadline comes before the request would be answered
		// is not sent: its caller would leave mid-request, and a write whose
		// answer is lost comes back as a replay of itself.
		//
		// The expected time is only evidence while requests come back: with
		// none of the kind in flight and none back for longer than it would
		// take, it is stale (one slow request after an outage set it, and
		// refusing every call since sent nothing to correct it), and the
		// calls go, to learn the time anew. Otherwise a slow patch would
		// leave every later call refused, and nothing sent, for good.
		k := q.key.kind()
		need := noTimeLeftFactor * b.limiters[k].Expected()
		now := time.Now()
		stale := b.kindInFlight[k] == 0 && now.Sub(b.lastDone[k]) > need
		keep := taken[:0:0]
		for _, c := range taken {
			if dl, ok := c.ctx.Deadline(); ok && need > 0 && !stale && dl.Sub(now) < need {
				b.refuse(q.key, c, fmt.Errorf("%w: %s left, a request takes about %s", ErrNoTimeLeft,
					dl.Sub(now).Round(time.Millisecond), (need/noTimeLeftFactor).Round(time.Millisecond)))
				continue
			}
			keep = append(keep, c)
		}
		if len(keep) == 0 {
			continue
		}

		bt := &batch{calls: make([]*call, 0, len(keep)), stale: stale && need > 0}
		// The request carries the first call's values, not its
		// cancellation: it is cancelled once no caller waits for it, and
		// the client bounds it with the timeout for its size.
		bt.ctx, bt.cancel = context.WithCancel(context.WithoutCancel(keep[0].ctx))
		// live counts every call taken before any is marked sent: a caller
		// that leaves as soon as its call is sent must not find the count
		// at zero, and cancel the request, while calls after its own are
		// still being added. The calls whose callers left before are taken
		// off the count.
		bt.live.Add(int32(len(keep)))
		for _, c := range keep {
			// batch is set before the call is marked sent: a caller that
			// then finds it sent uses it.
			c.batch = bt
			if c.state.CompareAndSwap(callPending, callSent) {
				bt.calls = append(bt.calls, c)
				if testHookSent != nil {
					testHookSent(c)
				}
			} else {
				bt.live.Add(-1)
				b.land(c, false)
			}
		}
		if len(bt.calls) == 0 {
			bt.cancel()
			continue // every caller gave up: nothing to send
		}
		if bt.live.Load() <= 0 {
			bt.cancel() // every caller left as its call was added: send skips it
		}
		b.inFlight++
		q.inFlight++
		b.kindInFlight[k]++
		b.stats.peak = max(b.stats.peak, b.inFlight)
		go b.send(q, bt)
	}
}

// testHookSent, when set (by tests), is called with each call dispatch marks
// sent, mu held.
var testHookSent func(c *call)

// refuse answers c with err (wrapped in an *Error of its operation)
// without sending it, unless its caller has left already. Called with mu
// held.
func (b *Batcher) refuse(key queueKey, c *call, err error) {
	if c.state.CompareAndSwap(callPending, callSent) {
		op := "AddAccountMetadata"
		if key.read {
			op = "GetAccount"
		}
		c.err = &Error{Op: op, Err: err}
		b.stats.noTimeLeft.Add(1)
		b.land(c, false)
		close(c.done)
		return
	}
	b.land(c, false)
}

// send makes the request of bt, hands every call its result and frees the
// slot.
func (b *Batcher) send(q *queue, bt *batch) {
	defer bt.cancel()
	ctx, span := traceBatch(bt.ctx, q.key.read, bt.calls) // trace.go
	defer span.End()
	ledger := q.key.ledger
	sent := true
	start := time.Now()
	var err error
	switch {
	case bt.live.Load() <= 0:
		// Every caller gave up after it was taken: nothing to send.
		sent = false
	case q.key.read:
		b.stats.readRequests.Add(1)
		err = b.sendReads(ctx, ledger, bt.calls)
	default:
		b.stats.writeRequests.Add(1)
		err = b.sendWrites(ctx, ledger, bt.calls)
	}
	k := q.key.kind()
	if sent && bt.ctx.Err() == nil {
		// A request cancelled because nobody waited any more says nothing
		// about the ledger.
		overload := isOverload(err) || (err == nil && !q.key.read && elementsOverloaded(bt.calls))
		if overload {
			b.stats.overloads.Add(1)
		}
		if errors.Is(err, ErrTimeout) {
			b.stats.timeouts.Add(1)
		}
		sample := Sample{Latency: time.Since(start), Elements: len(bt.calls), Overload: overload, Stale: bt.stale}
		if t, ok := b.next.(interface{ TimeoutFor(int) time.Duration }); ok {
			sample.Timeout = t.TimeoutFor(len(bt.calls))
		}
		b.limiters[k].Observe(sample)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range bt.calls {
		b.land(c, sent)
		close(c.done)
	}
	b.inFlight--
	q.inFlight--
	b.kindInFlight[k]--
	b.lastDone[k] = time.Now()
	b.dispatch()
}

// isOverload says whether a request's error means the ledger did not cope:
// a timeout, no answer at all, a 5xx or a 429. An answer that refuses the
// call (a 4xx) is the ledger coping.
func isOverload(err error) bool {
	var e *Error
	switch {
	case err == nil:
		return false
	case errors.Is(err, ErrTimeout):
		return true
	case !errors.As(err, &e):
		return true // not the client's: no answer
	case e.notSent:
		return false
	case e.StatusCode == 0:
		return !errors.Is(e.Err, context.Canceled) && !errors.Is(e.Err, context.DeadlineExceeded)
	}
	return overloadStatus(e.StatusCode)
}

// elementsOverloaded says whether most writes of a bulk that was answered
// failed as a 5xx would (an element's INTERNAL): a ledger that answers the
// bulk but fails its elements (its database out of connections, say) does
// not cope, as much as one that answers 503. A few failing among many are
// the elements' own (two of them creating one account at once).
func elementsOverloaded(calls []*call) bool {
	failed := 0
	for _, c := range calls {
		if isOverload(c.err) {
			failed++
		}
	}
	return len(calls) > 1 && 2*failed > len(calls)
}

// overloadStatus says whether an answer's status means the ledger did not
// cope: a 5xx or a 429.
func overloadStatus(code int) bool {
	return code >= 500 || code == http.StatusTooManyRequests
}

// sendReads makes the request of calls and returns its error as a whole,
// if any.
func (b *Batcher) sendReads(ctx context.Context, ledger string, calls []*call) error {
	if len(calls) == 1 {
		c := calls[0]
		c.account, c.found, c.err = b.next.GetAccount(ctx, ledger, c.address)
		return c.err
	}
	addresses := make([]string, len(calls))
	for i, c := range calls {
		addresses[i] = c.address
	}
	found, err := b.next.ListAccounts(ctx, ledger, addresses)
	for _, c := range calls {
		if err != nil {
			c.err = err
			continue
		}
		c.account, c.found = found[c.address]
		if c.found {
			// Each caller gets its own map, as from GetAccount.
			c.account.Metadata = cloneMap(c.account.Metadata)
		}
	}
	return err
}

// sendWrites makes the request of calls and returns its error as a whole,
// if any; the errors of elements are their calls' only.
func (b *Batcher) sendWrites(ctx context.Context, ledger string, calls []*call) error {
	if len(calls) == 1 {
		c := calls[0]
		c.write, c.err = b.next.AddAccountMetadata(ctx, ledger, c.address, c.metadata, c.key)
		return c.err
	}
	elems := make([]BulkAddMetadata, len(calls))
	for i, c := range calls {
		elems[i] = BulkAddMetadata{Address: c.address, Metadata: c.metadata, IdempotencyKey: c.key}
	}
	results, err := b.next.Bulk(ctx, ledger, elems)
	if err == nil && len(results) != len(calls) {
		err = &Error{Op: "Bulk", Err: fmt.Errorf("%w: %d results for %d elements", ErrUnexpectedResponse, len(results), len(calls))}
	}
	for i, c := range calls {
		if err != nil {
			c.err = err
			continue
		}
		c.err = results[i].Err
	}
	return err
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
