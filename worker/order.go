package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/messages"
)

// Order is how the commands of one wallet are ordered (SPEC §8).
type Order string

const (
	// OrderWallet applies the commands of one wallet in their
	// WALLETS_COMMANDS order, whichever worker holds them (the default).
	OrderWallet Order = "wallet"
	// OrderNone applies every command as soon as a slot is free.
	OrderNone Order = "none"
)

// ParseOrder parses an --order value.
func ParseOrder(s string) (Order, error) {
	switch o := Order(s); o {
	case OrderWallet, OrderNone:
		return o, nil
	}
	return "", fmt.Errorf("order %q: want %q or %q", s, OrderWallet, OrderNone)
}

// A wallet's line is its commands still in WALLETS_COMMANDS, a work queue:
// a command leaves it when it is settled (acknowledged: applied, rejected or
// dead-lettered), and stays in it while it waits for a retry. The first
// command stored on wallets.commands.*.<wallet> is therefore the head of the
// wallet's line, and the stream answers which one it is: a get of the first
// message on that filter (a direct get on a single-replica stream, else a
// message get served by the stream's leader, never stale; see
// directReadable). A delivery is applied only when it is its wallet's head; until then
// it waits, its lease renewed, woken when a command of the same
// wallet settles in this process and polling otherwise (another worker holds
// the head). A command of one wallet thus never overtakes an earlier one,
// through redeliveries, retries and worker deaths (the head of a dead
// worker is redelivered after AckWait and the line resumes).
//
// The cost: one get per command, and a wallet's commands one at a time. A
// waiting command steps aside (delivery.stepAside): it gives its slot back
// and waits, its lease renewed, as long as a live head can take. Past the
// aside room it waits in its slot, and is handed back after a whole AckWait,
// so that slots full of waiters cannot keep a redelivered head from being
// pulled (see handBackDue).
type line struct {
	order  Order
	stream func(ctx context.Context) (jetstream.Stream, error)
	// maxWait is how long a command waits in its slot, and how long one
	// waits while the stream cannot be asked; asideWait how long one that
	// stepped aside waits (handBackDue).
	maxWait, asideWait time.Duration

	// draining is closed when the worker drains.
	draining chan struct{}
	drain    sync.Once

	mu sync.Mutex
	s  jetstream.Stream
	// sAt is when s was taken: its cached configuration (replicas, direct
	// gets) decides how the stream is asked, and is taken again after
	// lineStreamRefresh, or at once after a get that failed.
	sAt time.Time
	// sErr is why the handle could not be taken at sErrAt: asked again only
	// after lineStreamRetry, so that checks against a stream that is refused
	// (or cannot be read) do not each cost a stream info request.
	sErr   error
	sErrAt time.Time
	// waiting are the commands waiting here, by wallet and sequence: only
	// the first of a wallet asks the stream, the others wait for it.
	waiting map[string]map[uint64]*lineWaiter
}

// lineWaiter is a command waiting for its turn in its wallet's line. The head
// of the line may take it along, with the commands right behind it, in one
// chain (handlers.Chain): the waiter is then a rider, and gets its answer
// from the head.
type lineWaiter struct {
	seq   uint64
	chain *handlers.Chain // the chain it may ride, nil if none
	cmd   handlers.Command
	key   string
	d     *delivery

	// wake is signalled when the waiter is the first of its wallet here
	// and a command of the wallet settles here, or when the waiter becomes
	// that first one.
	wake chan struct{}

	// Under line.mu: taken once a head took it; taken is then closed, and
	// answer gets what became of it.
	isTaken bool
	taken   chan struct{}
	answer  chan handlers.ChainAnswer
}

func newWaiter(d *delivery, cmd handlers.Command, key string) *lineWaiter {
	return &lineWaiter{seq: d.seq, d: d, cmd: cmd, key: key, chain: handlers.ChainOf(cmd),
		wake: make(chan struct{}, 1), taken: make(chan struct{}), answer: make(chan handlers.ChainAnswer, 1)}
}

// errRiding is returned to a waiter a head took along: its answer comes
// from the head.
var errRiding = errors.New("riding with the head of its wallet's line")

// Poll intervals of a waiter whose head is held elsewhere.
const (
	linePollMin = 2 * time.Millisecond
	linePollMax = 50 * time.Millisecond
	// lineBehindPoll is how often a waiter behind another of its wallet
	// here looks again without being woken (it is woken when it is first).
	lineBehindPoll = time.Second
)

// errDraining is returned to a waiting delivery when its worker drains: it
// has not started, so it is handed back at once.
var errDraining = errors.New("draining")

// errLineWait is returned when a delivery waited for its turn as long as it
// may (handBackDue).
var errLineWait = errors.New("waited for an earlier command of the wallet as long as it may")

// errSettledElsewhere is returned when d's command is no longer in
// WALLETS_COMMANDS (a work queue, with no age or size limit): another
// delivery of it settled it (a copy of it held here while its lease lapsed,
// or a duplicate delivery), or an operator removed it. Its outcome is
// stored already; deciding it again could contradict it (a rejection,
// applied now that the wallet holds the funds).
var errSettledElsewhere = errors.New("no longer in the commands stream: settled by another delivery")

func newLine(order Order, js jetstream.JetStream, maxWait, asideWait time.Duration) *line {
	return &line{
		order:     order,
		maxWait:   maxWait,
		asideWait: asideWait,
		draining:  make(chan struct{}),
		waiting:   map[string]map[uint64]*lineWaiter{},
		stream: func(ctx context.Context) (jetstream.Stream, error) {
			s, err := js.Stream(ctx, messages.StreamCommands)
			if err != nil {
				return nil, err
			}
			return s, directReadable(s.CachedInfo().Config)
		},
	}
}

// directReadable refuses a replicated commands stream that allows direct
// gets. The head of a wallet's line is read with a direct get when the
// stream allows them (nats.go chooses so), which is cheaper than the
// JetStream API's message get; but any replica answers a direct get, and one
// that lags could miss the earlier command of a wallet and let a later one
// go first. Provision allows them on a single-replica stream only.
func directReadable(c jetstream.StreamConfig) error {
	if c.AllowDirect && c.Replicas > 1 {
		return fmt.Errorf("%s allows direct gets with %d replicas: a replica that lags could answer the order check wrongly; "+
			"set allow_direct false on it (provision does on a replicated stream) or run with --order none", c.Name, c.Replicas)
	}
	return nil
}

// head returns the stream sequence of the first command of wallet still in
// WALLETS_COMMANDS, 0 if there is none.
func (l *line) head(ctx context.Context, wallet string) (uint64, error) {
	return l.first(ctx, wallet, 1)
}

// lineStreamRefresh is how long a stream handle serves before it is taken
// again: a stream scaled to three replicas, or whose direct gets were turned
// off, under running workers is then asked as it now must be (or refused, as
// at start, see directReadable) within that time.
const lineStreamRefresh = time.Minute

// lineStreamRetry is how long a failure to take the stream handle answers
// the checks before the stream is asked again.
const lineStreamRetry = time.Second

// first returns the stream sequence of the first command of wallet still
// in WALLETS_COMMANDS from sequence from on, 0 if there is none.
func (l *line) first(ctx context.Context, wallet string, from uint64) (uint64, error) {
	filter := jetstream.WithGetMsgSubject(messages.SubjectCommandsPrefix + "*." + wallet)
	s, fresh, err := l.handle(ctx, nil)
	if err != nil {
		return 0, err
	}
	m, err := s.GetMsg(ctx, from, filter)
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && !fresh && ctx.Err() == nil {
		// The handle may be older than a change to the stream (direct
		// gets turned off answer no more): take it again, and ask once more.
		if s, _, err = l.handle(ctx, s); err != nil {
			return 0, err
		}
		m, err = s.GetMsg(ctx, from, filter)
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return m.Sequence, nil
}

// handle returns the stream handle, taking it again when there is none, when
// it is older than lineStreamRefresh, or when it is stale (the handle a
// failed get used); fresh says it was taken by this call.
func (l *line) handle(ctx context.Context, stale jetstream.Stream) (s jetstream.Stream, fresh bool, err error) {
	l.mu.Lock()
	s = l.s
	if s != nil && (s == stale || time.Since(l.sAt) > lineStreamRefresh) {
		s = nil
	}
	sErr := l.sErr
	if s == nil && sErr != nil && time.Since(l.sErrAt) < lineStreamRetry {
		l.mu.Unlock()
		return nil, false, sErr
	}
	l.mu.Unlock()
	if s != nil {
		return s, false, nil
	}
	s, err = l.stream(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			// The old handle is not used again: the stream changed, or
			// is refused (directReadable).
			l.s, l.sErr, l.sErrAt = nil, err, time.Now()
		}
		return nil, false, err
	}
	l.s, l.sAt, l.sErr = s, time.Now(), nil
	return s, true, nil
}

// behind reports whether a command of wallet earlier than seq waits here.
func (l *line) behind(wallet string, seq uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for s := range l.waiting[wallet] {
		if s < seq {
			return true
		}
	}
	return false
}

// signalFirst wakes the first command of wallet waiting here, the one that
// asks the stream. Called with mu held.
func (l *line) signalFirst(wallet string) {
	var first *lineWaiter
	for _, wt := range l.waiting[wallet] {
		if first == nil || wt.seq < first.seq {
			first = wt
		}
	}
	if first != nil {
		select {
		case first.wake <- struct{}{}:
		default:
		}
	}
}

// enter and leave keep waiting. leave reports whether a head took wt
// along, in which case it stays a rider whatever made it leave.
func (l *line) enter(wallet string, wt *lineWaiter) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.waiting[wallet] == nil {
		l.waiting[wallet] = map[uint64]*lineWaiter{}
	}
	l.waiting[wallet][wt.seq] = wt
}

func (l *line) leave(wallet string, wt *lineWaiter) (taken bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.waiting[wallet], wt.seq)
	if len(l.waiting[wallet]) == 0 {
		delete(l.waiting, wallet)
	} else {
		l.signalFirst(wallet) // it may be the first now
	}
	return wt.isTaken
}

// board takes along the commands waiting here right behind head, the head
// of its wallet's line, that ride its chain: consecutive in the line (the
// stream, asked from each one's sequence on, holds none of the wallet in
// between, or the sequences follow one another), at most
// chain.MaxLength() with the head. A waiter taken is a
// rider: its answer comes from the head (Worker.decide).
func (l *line) board(ctx context.Context, wallet string, head uint64, chain *handlers.Chain) []*lineWaiter {
	l.mu.Lock()
	var cands []*lineWaiter
	for seq, wt := range l.waiting[wallet] {
		if seq > head && !wt.isTaken {
			cands = append(cands, wt)
		}
	}
	l.mu.Unlock()
	if len(cands) == 0 {
		return nil
	}
	slices.SortFunc(cands, func(a, b *lineWaiter) int { return cmp.Compare(a.seq, b.seq) })
	prev, n := head, 0
	for _, wt := range cands {
		if n+1 >= chain.MaxLength() || wt.chain != chain {
			break
		}
		if wt.seq != prev+1 {
			// Other commands were stored between them: none may be of
			// this wallet. (Consecutive sequences leave no room for one.)
			next, err := l.first(ctx, wallet, prev+1)
			if err != nil || next != wt.seq {
				break
			}
		}
		prev, n = wt.seq, n+1
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	riders := cands[:0]
	for _, wt := range cands[:n] {
		if wt.isTaken || l.waiting[wallet][wt.seq] != wt {
			break // it left meanwhile (drained, or went ahead), or another head took it: the chain ends before it
		}
		wt.isTaken = true
		close(wt.taken)
		riders = append(riders, wt)
	}
	return riders
}

// left wakes the first command of wallet waiting here: one of its
// commands was settled here. Only the first asks the stream; the others
// wait until they are first, so a settle wakes one waiter, not every one
// of a busy wallet.
func (l *line) left(wallet string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.signalFirst(wallet)
}

// await returns once d is the head of its wallet's line, with how long it
// waited and the head it waited behind last (0 if none). It returns an error
// when ctx ends, when the worker drains, when it is to be handed back
// (handBackDue), or when d's command is gone from the stream
// (errSettledElsewhere).
//
// When a head takes wt along, await returns errRiding, whatever it was
// doing: wt's answer comes from the head.
func (l *line) await(ctx context.Context, wt *lineWaiter, wallet string, waiting func(head uint64)) (waited time.Duration, err error) {
	if l.order == OrderNone || wallet == messages.UnknownWallet {
		return 0, nil
	}
	start := time.Now()
	l.enter(wallet, wt)
	defer func() {
		// Deferred, so that a panic below does not leave wt in the line,
		// where every later command of the wallet here would wait behind it.
		if l.leave(wallet, wt) {
			err = errRiding
		}
		waited = time.Since(start)
	}()
	return 0, l.wait(ctx, wt, wallet, start, waiting)
}

func (l *line) wait(ctx context.Context, wt *lineWaiter, wallet string, start time.Time, waiting func(head uint64)) error {
	d := wt.d
	poll := linePollMin
	var failures int
	var failingSince time.Time // of the asks failing in a row
	for {
		if l.behind(wallet, d.seq) {
			// An earlier command of the wallet waits here: it asks the
			// stream; this one waits until it is the first here (or
			// looks again after a while).
			waiting(0)
			select {
			case <-wt.wake:
			case <-time.After(lineBehindPoll):
			case <-ctx.Done():
				return context.Cause(ctx)
			case <-l.draining:
				return errDraining
			case <-wt.taken:
				return errRiding
			}
			if l.handBackDue(d, start, time.Time{}) {
				return errLineWait
			}
			continue
		}
		head, err := l.head(ctx, wallet)
		switch {
		case err == nil && head == d.seq:
			return nil
		case err == nil && (head == 0 || head > d.seq):
			// d itself is gone: settled by another delivery.
			return errSettledElsewhere
		case err == nil:
			waiting(head)
			failures, failingSince = 0, time.Time{}
		default:
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			failures++
			if failures == 1 {
				failingSince = time.Now()
			}
			if failures == 3 {
				waiting(0)
			}
		}
		if l.handBackDue(d, start, failingSince) {
			return errLineWait
		}
		select {
		case <-wt.wake:
			poll = linePollMin
		case <-time.After(poll):
			poll = min(2*poll, linePollMax)
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-l.draining:
			return errDraining
		case <-wt.taken:
			return errRiding
		}
	}
}

// handBackDue reports whether d, waiting for its wallet's line since start
// (the stream failing to answer since failing, if not zero), is to be handed
// back. A command waiting in its slot (the aside room full) is, after
// maxWait, so that slots full of waiters cannot keep the head from being
// pulled; so is one that could not ask the stream for maxWait (its
// connection may be gone, and the command redelivered elsewhere). One that
// stepped aside holds nothing another command needs: it waits asideWait,
// longer than a live head can keep its place (its whole retry budget, and
// an ack wait per delivery), since each hand-back spends a delivery of its
// own budget; handed back every maxWait, the commands behind a head in a
// long retry were dead-lettered as RETRIES_EXHAUSTED without having failed
// once. Past asideWait the head is taken to be stranded (JetStream will not
// deliver it again), and its waiters are handed back, in the end
// dead-lettered, rather than wait forever.
func (l *line) handBackDue(d *delivery, start, failing time.Time) bool {
	switch {
	case !failing.IsZero() && time.Since(failing) >= l.maxWait:
		return true
	case d.aside:
		return time.Since(start) >= l.asideWait
	default:
		return time.Since(start) >= l.maxWait
	}
}

// stop hands every waiting delivery back: the worker drains.
func (l *line) stop() { l.drain.Do(func() { close(l.draining) }) }
