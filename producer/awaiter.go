package producer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/messages"
)

// ErrAwaiterStopped is returned to callers still waiting when their Awaiter
// stops.
var ErrAwaiterStopped = errors.New("producer: awaiter stopped")

// DefaultRetain is how many outcomes an Awaiter keeps by default.
const DefaultRetain = 100_000

// Awaiter waits for the outcomes of many commands at once. It reads
// WALLETS_EVENTS with one ordered consumer (one subscription on the
// connection, one consumer on the stream) and hands each outcome event to the
// callers waiting for its Wallets-Command-Seq.
//
// It finds the outcome of every command whose event is stored after its start
// position: by default the WALLETS_COMMANDS duplicate window before it was
// created, which covers every command published, or reported as a Duplicate,
// after NewAwaiter returned (a duplicate is reported only for an original
// stored within that window, and its event is stored after it). Outcomes read
// before anyone awaits them are kept, up to the last Retain ones, so a caller
// may publish first and await later. For a command older than that, use
// Producer.Await.
//
// An Awaiter is safe for concurrent use. Stop it when done.
type Awaiter struct {
	js      jetstream.JetStream
	cc      jetstream.ConsumeContext
	retain  int
	stopped chan struct{}
	stop    sync.Once

	mu      sync.Mutex
	lastSeq uint64           // the highest stream sequence received
	seen    map[uint64]event // by command sequence
	order   []uint64         // command sequences of seen, oldest first from head
	head    int
	waiting map[uint64][]*batch
}

// AwaiterOption configures an Awaiter.
type AwaiterOption func(*awaiterConfig)

type awaiterConfig struct {
	lookback    time.Duration
	lookbackSet bool
	retain      int
}

// WithLookback sets how far back in WALLETS_EVENTS the Awaiter starts
// reading; 0 starts at the end, so only commands published after NewAwaiter
// returned are found. The default is the duplicate window of WALLETS_COMMANDS.
func WithLookback(d time.Duration) AwaiterOption {
	return func(c *awaiterConfig) { c.lookback, c.lookbackSet = max(d, 0), true }
}

// WithRetain sets how many outcomes the Awaiter keeps for callers that have
// not awaited them yet (default DefaultRetain, some 30 MB at most). An
// outcome pushed out before it is awaited is waited for in vain.
func WithRetain(n int) AwaiterOption {
	return func(c *awaiterConfig) {
		if n > 0 {
			c.retain = n
		}
	}
}

// NewAwaiter starts an Awaiter on js. ctx bounds only the start.
func NewAwaiter(ctx context.Context, js jetstream.JetStream, opts ...AwaiterOption) (*Awaiter, error) {
	cfg := awaiterConfig{retain: DefaultRetain}
	for _, o := range opts {
		o(&cfg)
	}
	occ := jetstream.OrderedConsumerConfig{
		// No filter: the stream holds outcome events only, of every kind
		// (AwaitMany reads create-balance ones, AwaitCommands any kind's);
		// and a consumer without a filter is created on the API subject
		// without one, $JS.API.CONSUMER.CREATE.WALLETS_EVENTS.<name>, the
		// one auth.conf grants producers.
		DeliverPolicy: jetstream.DeliverNewPolicy,
	}
	if !cfg.lookbackSet || cfg.lookback > 0 {
		lookback := cfg.lookback
		if !cfg.lookbackSet {
			lookback = -1
		}
		start, err := lookbackStart(ctx, js, lookback)
		if err != nil {
			return nil, fmt.Errorf("producer: awaiter: %w", err)
		}
		occ.DeliverPolicy, occ.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	oc, err := js.OrderedConsumer(ctx, messages.StreamEvents, occ)
	if err != nil {
		return nil, fmt.Errorf("producer: awaiter: consumer on %s: %w", messages.StreamEvents, err)
	}
	a := &Awaiter{
		js:      js,
		retain:  cfg.retain,
		stopped: make(chan struct{}),
		seen:    make(map[uint64]event),
		waiting: make(map[uint64][]*batch),
	}
	cc, err := oc.Consume(a.receive)
	if err != nil {
		return nil, fmt.Errorf("producer: awaiter: consume %s: %w", messages.StreamEvents, err)
	}
	a.cc = cc
	return a, nil
}

// lookbackStart returns the time lookback before now by the server's clock
// (which stamps the events), or, for a negative lookback, the duplicate
// window of WALLETS_COMMANDS before now: the oldest time at which the
// original of a command reported as a duplicate now can have been stored.
func lookbackStart(ctx context.Context, js jetstream.JetStream, lookback time.Duration) (time.Time, error) {
	s, err := js.Stream(ctx, messages.StreamCommands)
	if err != nil {
		return time.Time{}, fmt.Errorf("stream %s: %w", messages.StreamCommands, err)
	}
	info := s.CachedInfo()
	if lookback < 0 {
		lookback = info.Config.Duplicates
	}
	now := info.TimeStamp
	if now.IsZero() {
		now = time.Now()
	}
	return now.Add(-lookback), nil
}

// Stop stops reading events; callers still waiting get ErrAwaiterStopped.
func (a *Awaiter) Stop() {
	a.stop.Do(func() {
		a.cc.Stop()
		close(a.stopped)
	})
}

// Await returns the outcome of the command stored at seq.
func (a *Awaiter) Await(ctx context.Context, seq uint64) (Outcome, error) {
	out, err := a.AwaitMany(ctx, []uint64{seq})
	return out[0], err
}

// AwaitMany returns the outcomes of the commands stored at seqs, in the same
// order, once all have arrived. When ctx ends first, or the Awaiter stops, it
// returns the outcomes that arrived (a zero Outcome for the others) and an
// error that wraps the cause.
func (a *Awaiter) AwaitMany(ctx context.Context, seqs []uint64) ([]Outcome, error) {
	evs, err := a.awaitEvents(ctx, seqs)
	out := make([]Outcome, len(seqs))
	for i, e := range evs {
		if e.subject == "" {
			continue
		}
		o, derr := e.outcome()
		out[i] = o
		if derr != nil {
			err = errors.Join(err, derr)
		}
	}
	return out, err
}

// awaitEvents is AwaitMany without the decoding: the events of the commands
// stored at seqs, a zero event for those that did not arrive.
func (a *Awaiter) awaitEvents(ctx context.Context, seqs []uint64) ([]event, error) {
	b := &batch{out: make([]event, len(seqs)), pos: make(map[uint64][]int, len(seqs)), done: make(chan struct{})}
	a.mu.Lock()
	for i, s := range seqs {
		if e, ok := a.seen[s]; ok {
			b.set(i, e)
			continue
		}
		if _, ok := b.pos[s]; !ok {
			a.waiting[s] = append(a.waiting[s], b)
		}
		b.pos[s] = append(b.pos[s], i)
	}
	pending := len(b.pos)
	a.mu.Unlock()
	if pending == 0 {
		return b.out, nil
	}

	var cause error
	select {
	case <-b.done:
		return b.out, nil
	case <-ctx.Done():
		cause = context.Cause(ctx)
	case <-a.stopped:
		cause = ErrAwaiterStopped
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(b.pos) == 0 { // completed meanwhile
		return b.out, nil
	}
	for s := range b.pos {
		ws := a.waiting[s]
		for i, w := range ws {
			if w == b {
				ws = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(ws) == 0 {
			delete(a.waiting, s)
		} else {
			a.waiting[s] = ws
		}
	}
	return b.out, fmt.Errorf("producer: %d of %d outcomes not received: %w", len(b.pos), len(seqs), cause)
}

// receive is the ordered consumer's handler; it runs on one goroutine.
//
// The stream holds outcome events only and the consumer has no filter, so
// its messages come with consecutive stream sequences. A jump means the
// client lost messages on the way (an ordered consumer can, on a starved
// process: see the bench's drains): the missing ones are read from the
// stream by sequence, so that no awaited outcome is missed for it.
func (a *Awaiter) receive(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	seq := md.Sequence.Stream
	a.mu.Lock()
	last := a.lastSeq
	a.lastSeq = max(a.lastSeq, seq)
	a.mu.Unlock()
	if last != 0 && seq > last+1 {
		a.fill(last+1, seq-1)
	}
	if e, ok := eventAt(m.Subject(), seq, m.Headers(), m.Data()); ok {
		a.deliver(e)
	}
}

// fill reads the events stored at sequences from to to and delivers them.
func (a *Awaiter) fill(from, to uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := a.js.Stream(ctx, messages.StreamEvents)
	if err != nil {
		return
	}
	for seq := from; seq <= to; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted meanwhile, or unreadable: nothing to deliver
		}
		if e, ok := eventAt(m.Subject, m.Sequence, m.Header, m.Data); ok {
			a.deliver(e)
		}
	}
}

// deliver records e and hands it to the callers awaiting its command.
func (a *Awaiter) deliver(e event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, dup := a.seen[e.commandSeq]; !dup { // the first outcome of a command is its outcome
		a.seen[e.commandSeq] = e
		a.order = append(a.order, e.commandSeq)
		a.evict()
	}
	e = a.seen[e.commandSeq]
	for _, b := range a.waiting[e.commandSeq] {
		for _, i := range b.pos[e.commandSeq] {
			b.set(i, e)
		}
		delete(b.pos, e.commandSeq)
		if len(b.pos) == 0 {
			close(b.done)
		}
	}
	delete(a.waiting, e.commandSeq)
}

// evict forgets the oldest outcomes beyond retain. Lock held.
func (a *Awaiter) evict() {
	for len(a.order)-a.head > a.retain {
		delete(a.seen, a.order[a.head])
		a.head++
	}
	if a.head > 1024 && a.head > len(a.order)/2 {
		a.order = append([]uint64(nil), a.order[a.head:]...)
		a.head = 0
	}
}

// batch is one awaitEvents call: where each awaited sequence goes in out,
// and the sequences still missing (pos's keys).
type batch struct {
	out  []event
	pos  map[uint64][]int
	done chan struct{}
}

func (b *batch) set(i int, e event) { b.out[i] = e }
