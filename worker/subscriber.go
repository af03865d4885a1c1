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
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
	closing  chan struct{}
	closed   chan struct{}
	stopOnce sync.Once
}

var _ message.Subscriber = (*subscriber)(nil)

func (s *subscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing != nil {
		return nil, errors.New("worker: subscriber supports one subscription")
	}
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

// fetchWait is how long one pull request waits for commands. It bounds how
// long a shutdown waits for the pull in progress.
const fetchWait = time.Second

// dispatch pulls exactly as many commands as there are free slots, so that no
// command waits in a client buffer while its AckWait runs: every delivery
// starts being handled, and its lease kept, as soon as it arrives. Once
// closing, it pulls no more and hands back what the last pull still brings.
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
			return
		}
		n := 1
	more:
		for n < s.concurrency {
			select {
			case s.slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		batch, err := s.consumer.Fetch(n, jetstream.FetchMaxWait(fetchWait))
		if err != nil {
			s.release(n)
			retry = min(max(2*retry, 50*time.Millisecond), 5*time.Second)
			s.log.Warn("pulling commands failed; retrying", "error", err, "retry_in", retry.String())
			select {
			case <-time.After(retry):
			case <-s.closing:
				return
			}
			continue
		}
		got := 0
		for m := range batch.Messages() {
			got++
			d := newDelivery(m, time.Now())
			select {
			case <-s.closing:
				s.handBack(d)
				s.release(1)
				continue
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
		s.release(n - got)
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			retry = min(max(2*retry, 50*time.Millisecond), 5*time.Second)
			s.log.Warn("pull request ended with an error; retrying", "error", err, "retry_in", retry.String())
			select {
			case <-time.After(retry):
			case <-s.closing:
				return
			}
			continue
		}
		retry = 0
	}
}

func (s *subscriber) release(n int) {
	for range n {
		<-s.slots
	}
}

func (s *subscriber) await(wm *message.Message, d *delivery) {
	defer s.inflight.Done()
	defer s.release(1)
	select {
	case <-wm.Acked():
	case <-wm.Nacked():
	}
	if !d.settled.Load() {
		s.onUnsettled(d)
	}
}

// Close stops pulling, hands back what the last pull brings, and waits for
// the in-flight deliveries to settle before closing the output channel.
func (s *subscriber) Close() error {
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing == nil {
		return nil
	}
	s.stopOnce.Do(func() { close(closing) })
	<-s.closed
	return nil
}
