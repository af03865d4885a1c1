package worker

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
)

// Metadata keys of the Watermill messages the subscriber emits.
const (
	MetaSubject   = "subject"
	MetaSequence  = "stream_sequence"
	MetaDelivered = "delivered"
)

// delivery is one delivery of one stored command, from receipt to settle.
type delivery struct {
	msg        jetstream.Msg
	subject    string
	kind       string    // the subject's kind token, once handling started
	seq        uint64    // stream sequence in WALLETS_COMMANDS
	delivered  uint64    // 1 on the first delivery
	published  time.Time // when JetStream stored the command
	receivedAt time.Time // when this process received the delivery
	settled    atomic.Bool
	span       trace.Span // the consumer span, once handling started (trace.go)
	lease      lease

	// sub is the subscriber that pulled the delivery (nil in tests that
	// build deliveries by hand); aside is set while the delivery waits for
	// its wallet's line outside a slot (stepAside).
	sub   *subscriber
	aside bool
	// stepped is set once the delivery gave its room back (stepAside).
	stepped bool

	// In a chain (Worker.decide): eventTurn is the turn of the command
	// before this one, eventDone this one's. A turn ends once that
	// command's outcome event is written to the connection, or once it
	// will not be (its settle failed or it was handed back). They keep a
	// wallet's events in the order its commands were applied. Set by the
	// head before it answers.
	eventTurn *eventTurn
	eventDone *eventTurn

	// Used by the breaker, from the goroutine handling the delivery.
	heldIn        int // the outage during which the delivery last waited
	trialFailures int // failed trials during that outage
}

func newDelivery(m jetstream.Msg, now time.Time) *delivery {
	d := &delivery{msg: m, subject: m.Subject(), receivedAt: now, delivered: 1}
	if md, err := m.Metadata(); err == nil {
		d.seq = md.Sequence.Stream
		d.delivered = md.NumDelivered
		d.published = md.Timestamp
	}
	return d
}

type deliveryKey struct{}

func deliveryFrom(ctx context.Context) *delivery {
	d, _ := ctx.Value(deliveryKey{}).(*delivery)
	return d
}

// subscriber is a Watermill message.Subscriber over one JetStream pull
// consumer. Unlike watermill-nats' JetStream subscriber it keeps up to
// concurrency messages in flight, passes every header value through, and
// leaves the settle of each message to the worker (a Nack of a message the
// worker did not settle, a recovered panic for one, goes to onUnsettled).
//
// It pulls only what it can hold: at most concurrency commands in flight and
// as many again queued for a slot, each pull (Fetch) asking for as many as
// there is room for. A queued command's lease is renewed (see lease) from the
// moment it is received, so that however long the command in front of it
// takes, it is not redelivered to another worker meanwhile; an iterator with
// a client-side buffer could not do that, since the buffer is out of reach.
type subscriber struct {
	consumer    jetstream.Consumer
	concurrency int
	leasePeriod time.Duration
	log         *slog.Logger
	// work is the context of every handled message; it outlives the
	// subscription so that a drain lets in-flight commands finish.
	work        context.Context
	onUnsettled func(*delivery)
	handBack    func(*delivery)
	// paused, when set, returns a channel that is open while no command is
	// to be pulled (the ledger is unavailable), or nil.
	paused func() <-chan struct{}

	room  chan struct{}  // a token per command held: in a slot or queued
	queue chan *delivery // received, waiting for a slot
	slots chan struct{}
	// aside is a token per command waiting for its wallet's line outside
	// a slot, so that waiters leave room for the commands they wait for.
	aside chan struct{}
	// slotWaiters counts the commands waiting for their wallet's line in a
	// slot, the aside room being full.
	slotWaiters atomic.Int64
	inflight    sync.WaitGroup

	mu       sync.Mutex
	started  bool
	closing  chan struct{}
	pulled   chan struct{} // closed when pull returns
	closed   chan struct{}
	stopOnce sync.Once
}

var _ message.Subscriber = (*subscriber)(nil)

// pullWait is how long one pull waits for commands to arrive: the longest a
// shutdown waits for the last pull (cancelling it could lose commands on
// their way, leased until their AckWait runs out), and the interval of an
// idle worker's pull requests.
const pullWait = 250 * time.Millisecond

func (s *subscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return nil, errors.New("worker: subscriber supports one subscription")
	}
	s.started = true
	s.room = make(chan struct{}, 2*s.concurrency)
	s.queue = make(chan *delivery, 2*s.concurrency)
	s.slots = make(chan struct{}, s.concurrency)
	s.aside = make(chan struct{}, asideFactor*s.concurrency)
	s.closing = make(chan struct{})
	s.pulled = make(chan struct{})
	s.closed = make(chan struct{})
	out := make(chan *message.Message)
	go s.pull()
	go s.dispatch(out)
	go func() {
		select {
		case <-ctx.Done():
			_ = s.Close()
		case <-s.closing:
		}
	}()
	return out, nil
}

// pull fetches as many commands as there is room for, and queues them, until
// closing. It pulls nothing while paused.
func (s *subscriber) pull() {
	defer close(s.pulled)
	retry := time.Duration(0)
	for {
		if s.paused != nil {
			if p := s.paused(); p != nil {
				select {
				case <-p:
				case <-s.closing:
					return
				}
			}
		}
		select {
		case s.room <- struct{}{}:
		case <-s.closing:
			return
		}
		n := s.reserve(1)
		if n < 0 {
			return
		}
		got := 0
		batch, err := s.consumer.Fetch(n, jetstream.FetchMaxWait(pullWait))
		if err == nil {
			for m := range batch.Messages() {
				got++
				d := newDelivery(m, time.Now())
				d.sub = s
				startLease(d, s.leasePeriod, s.log)
				s.queue <- d // never blocks: the queue has room for every token
			}
			err = batch.Error()
		}
		for range n - got {
			<-s.room
		}
		if err == nil {
			retry = 0
			continue
		}
		retry = min(max(2*retry, 50*time.Millisecond), 5*time.Second)
		s.log.Warn("pulling commands failed; retrying", "error", err, "retry_in", retry.String())
		select {
		case <-time.After(retry):
		case <-s.closing:
			return
		}
	}
}

// reserve takes room for more commands, having taken have already. While
// slots still have queued work it waits for room for half a slot's worth, so
// that each pull brings a batch; when the queue runs dry it takes what room
// there is. It returns how much room it holds, or -1 once closing (having
// given the room back).
func (s *subscriber) reserve(have int) int {
	want := max(1, s.concurrency/2)
	for have < cap(s.room) {
		select {
		case s.room <- struct{}{}:
			have++
			continue
		default:
		}
		if have >= want || len(s.queue) == 0 {
			return have
		}
		select {
		case s.room <- struct{}{}:
			have++
		case <-s.closing:
			for range have {
				<-s.room
			}
			return -1
		}
	}
	return have
}

// dispatch takes a slot, then the next queued delivery, and hands it to the
// router. Once closing, it hands every queued delivery back to JetStream.
func (s *subscriber) dispatch(out chan<- *message.Message) {
	defer func() {
		s.inflight.Wait()
		close(out)
		close(s.closed)
	}()
	for {
		select {
		case s.slots <- struct{}{}:
		case <-s.closing:
			s.handBackQueued()
			return
		}
		var d *delivery
		select {
		case d = <-s.queue:
		case <-s.closing:
			<-s.slots
			s.handBackQueued()
			return
		}
		select {
		case <-s.closing:
			<-s.slots
			s.release(d, true)
			s.handBackQueued()
			return
		default:
		}
		wm := message.NewMessage(strconv.FormatUint(d.seq, 10), d.msg.Data())
		wm.Metadata.Set(MetaSubject, d.subject)
		wm.Metadata.Set(MetaSequence, strconv.FormatUint(d.seq, 10))
		wm.Metadata.Set(MetaDelivered, strconv.FormatUint(d.delivered, 10))
		wm.SetContext(context.WithValue(s.work, deliveryKey{}, d))
		s.inflight.Add(1)
		out <- wm // the router reads continuously, one goroutine per message
		go s.await(wm, d)
	}
}

func (s *subscriber) await(wm *message.Message, d *delivery) {
	defer s.inflight.Done()
	defer func() {
		if d.aside {
			// Settled while it waited aside (decided in another
			// command's chain): it holds aside room, not a slot.
			d.aside = false
			<-s.aside
			return
		}
		<-s.slots
	}()
	select {
	case <-wm.Acked():
	case <-wm.Nacked():
	}
	if !d.settled.Load() {
		s.onUnsettled(d)
	}
	s.release(d, false)
}

// release ends the subscriber's hold on d, handing it back first when asked.
func (s *subscriber) release(d *delivery, handBack bool) {
	if handBack {
		s.handBack(d)
	}
	d.lease.stop()
	if !d.stepped {
		<-s.room
	}
}

// asideFactor times Concurrency is how many commands a worker lets wait for
// their wallets' lines outside its slots.
const asideFactor = 64

// stepAside gives d's slot and room back while it waits for its wallet's
// line, if fewer than asideFactor*Concurrency commands wait so already, and
// reports whether it did. The subscriber may then pull and run other
// commands, among them the ones d waits for.
func (d *delivery) stepAside() bool {
	s := d.sub
	if s == nil || d.aside {
		return d.aside
	}
	if s.concurrency < 2 {
		// The one slot: dispatch holds it while it waits for a command,
		// and a command stepped aside could not get it back.
		return false
	}
	select {
	case s.aside <- struct{}{}:
	default:
		return false
	}
	d.aside = true
	<-s.slots
	if !d.stepped {
		d.stepped = true
		<-s.room
	}
	return true
}

// stepIn takes a slot again for a delivery that stepped aside. When none
// is free and a command waits for its wallet's line in a slot (the aside
// room full), the delivery goes on in its aside room at once: those slots
// may be held by commands waiting for this very one, the head of their
// line, and would be held until their AckWait ran out. Otherwise it waits
// for a slot at most patience, and then goes on aside all the same. The
// subscriber frees whichever it holds.
func (d *delivery) stepIn(patience time.Duration) {
	if !d.aside {
		return
	}
	select {
	case d.sub.slots <- struct{}{}:
		d.aside = false
		<-d.sub.aside
		return
	default:
	}
	if d.sub.slotWaiters.Load() > 0 {
		return
	}
	t := time.NewTimer(patience)
	defer t.Stop()
	select {
	case d.sub.slots <- struct{}{}:
		d.aside = false
		<-d.sub.aside
	case <-t.C:
	}
}

// waitInSlot records that d waits for its wallet's line in its slot, until
// the returned function is called.
func (d *delivery) waitInSlot() (done func()) {
	if d.sub == nil {
		return func() {}
	}
	d.sub.slotWaiters.Add(1)
	return func() { d.sub.slotWaiters.Add(-1) }
}

// handBackQueued hands back what was pulled but not started, once the last
// pull is over.
func (s *subscriber) handBackQueued() {
	<-s.pulled
	for {
		select {
		case d := <-s.queue:
			s.release(d, true)
		default:
			return
		}
	}
}

// Close stops pulling, hands back queued deliveries, and waits for the
// in-flight ones to settle before closing the output channel.
func (s *subscriber) Close() error {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if !started {
		return nil
	}
	s.stopOnce.Do(func() { close(s.closing) })
	<-s.closed
	return nil
}

// eventTurn is one command's turn in its chain's events (delivery.eventTurn).
type eventTurn struct {
	done    chan struct{}
	written bool // set before done is closed: the event was written
}

func newEventTurn() *eventTurn { return &eventTurn{done: make(chan struct{})} }

// end ends the turn; written says whether the event was written.
func (t *eventTurn) end(written bool) {
	t.written = written
	close(t.done)
}
