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
	seq        uint64    // stream sequence in WALLETS_COMMANDS
	delivered  uint64    // 1 on the first delivery
	published  time.Time // when JetStream stored the command
	receivedAt time.Time // when this process received the delivery
	settled    atomic.Bool
	span       trace.Span // the consumer span, once handling started (trace.go)
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
type subscriber struct {
	consumer    jetstream.Consumer
	concurrency int
	log         *slog.Logger
	// work is the context of every handled message; it outlives the
	// subscription so that a drain lets in-flight commands finish.
	work        context.Context
	onUnsettled func(*delivery)
	handBack    func(*delivery)

	slots    chan struct{}
	inflight sync.WaitGroup

	mu       sync.Mutex
	iter     jetstream.MessagesContext
	closing  chan struct{}
	closed   chan struct{}
	stopOnce sync.Once
}

var _ message.Subscriber = (*subscriber)(nil)

func (s *subscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.iter != nil {
		return nil, errors.New("worker: subscriber supports one subscription")
	}
	// The client buffers at most one batch of commands, one per slot. A
	// buffered command's AckWait runs before it gets a slot, for at most the
	// time the command in front takes (handler timeout + settle); a design
	// that pulled only as many as free slots (Fetch per batch) closed that
	// gap but cost about 20 % of throughput against an instant ledger, so
	// the gap is documented instead: past AckWait the command is delivered
	// again and replays, never applied twice.
	iter, err := s.consumer.Messages(jetstream.PullMaxMessages(s.concurrency))
	if err != nil {
		return nil, err
	}
	s.iter = iter
	s.slots = make(chan struct{}, s.concurrency)
	s.closing = make(chan struct{})
	s.closed = make(chan struct{})
	out := make(chan *message.Message)
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

// dispatch takes a slot, then the next delivery, and hands it to the router.
// Once closing, it hands every buffered delivery back to JetStream at once.
func (s *subscriber) dispatch(out chan<- *message.Message) {
	defer func() {
		s.inflight.Wait()
		close(out)
		close(s.closed)
	}()
	retry := time.Duration(0)
	for {
		select {
		case s.slots <- struct{}{}:
		case <-s.closing:
			s.drainBuffered()
			return
		}
		m, err := s.iter.Next()
		if err != nil {
			<-s.slots
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return
			}
			retry = min(max(2*retry, 50*time.Millisecond), 5*time.Second)
			s.log.Warn("pulling commands failed; retrying", "error", err, "retry_in", retry.String())
			select {
			case <-time.After(retry):
			case <-s.closing:
				s.drainBuffered()
				return
			}
			continue
		}
		retry = 0
		d := newDelivery(m, time.Now())
		select {
		case <-s.closing:
			<-s.slots
			s.handBack(d)
			s.drainBuffered()
			return
		default:
		}
		wm := message.NewMessage(strconv.FormatUint(d.seq, 10), m.Data())
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
	defer func() { <-s.slots }()
	select {
	case <-wm.Acked():
	case <-wm.Nacked():
	}
	if !d.settled.Load() {
		s.onUnsettled(d)
	}
}

// drainBuffered hands back what the client had buffered but nobody started.
func (s *subscriber) drainBuffered() {
	for {
		m, err := s.iter.Next(jetstream.NextMaxWait(time.Second))
		if err != nil {
			return
		}
		s.handBack(newDelivery(m, time.Now()))
	}
}

// Close stops pulling, hands back buffered deliveries, and waits for the
// in-flight ones to settle before closing the output channel.
func (s *subscriber) Close() error {
	s.mu.Lock()
	iter := s.iter
	s.mu.Unlock()
	if iter == nil {
		return nil
	}
	s.stopOnce.Do(func() {
		close(s.closing)
		iter.Drain()
	})
	<-s.closed
	return nil
}
