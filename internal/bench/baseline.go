package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/worker"
)

// The baseline's streams and consumer: copies of the worker's, settings
// included, under other names.
const (
	baselineCommands       = "BENCH_BASELINE_COMMANDS"
	baselineEvents         = "BENCH_BASELINE_EVENTS"
	baselineConsumer       = "bench-baseline"
	baselineCommandsPrefix = "bench.baseline.commands."
	baselineEventsPrefix   = "bench.baseline.events."
)

func provisionBaseline(ctx context.Context, js jetstream.JetStream, c worker.Config) error {
	for _, sc := range c.StreamConfigs() {
		switch sc.Name {
		case messages.StreamCommands:
			sc.Name, sc.Subjects = baselineCommands, []string{baselineCommandsPrefix + ">"}
		case messages.StreamEvents:
			sc.Name, sc.Subjects = baselineEvents, []string{baselineEventsPrefix + ">"}
		default:
			continue
		}
		sc.Description = "wallets-worker bench baseline"
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("provision %s: %w", sc.Name, err)
		}
	}
	cc := c.ConsumerConfig()
	cc.Durable, cc.FilterSubject, cc.Description = baselineConsumer, baselineCommandsPrefix+">", "wallets-worker bench baseline"
	if _, err := js.CreateOrUpdateConsumer(ctx, baselineCommands, cc); err != nil {
		return fmt.Errorf("provision %s: %w", baselineConsumer, err)
	}
	return nil
}

// baselineSide is the least a worker that reports outcomes must do: pull with
// the same consumer style and concurrency, publish one event per message
// (synchronously, PubAck checked, deduplicated by Nats-Msg-Id) and DoubleAck.
func (r *runner) baselineSide(ctx context.Context, nc *nats.Conn) side {
	return side{
		name:        "baseline",
		subject:     func(walletID string) string { return baselineCommandsPrefix + walletID },
		eventStream: baselineEvents,
		start: func() (func() error, <-chan struct{}, error) {
			js, err := jetstream.New(nc)
			if err != nil {
				return nil, nil, err
			}
			cons, err := js.Consumer(ctx, baselineCommands, baselineConsumer)
			if err != nil {
				return nil, nil, err
			}
			iter, err := cons.Messages(jetstream.PullMaxMessages(r.cfg.inFlight()))
			if err != nil {
				return nil, nil, err
			}
			var (
				wg       sync.WaitGroup
				failures atomic.Int64
				firstErr atomic.Pointer[error]
			)
			fail := func(err error) {
				failures.Add(1)
				firstErr.CompareAndSwap(nil, &err)
			}
			settle := r.wcfg.WithDefaults().SettleTimeout
			for range r.cfg.inFlight() {
				wg.Go(func() {
					for {
						m, err := iter.Next()
						if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
							return
						}
						if err != nil {
							fail(err)
							time.Sleep(50 * time.Millisecond) // a pull failed; do not spin
							continue
						}
						if err := baselineHandle(ctx, js, m, settle); err != nil {
							fail(err)
						}
					}
				})
			}
			return func() error {
				iter.Stop()
				wg.Wait()
				if p := firstErr.Load(); p != nil {
					return fmt.Errorf("baseline: %d failures, the first: %w", failures.Load(), *p)
				}
				return nil
			}, nil, nil
		},
	}
}

func baselineHandle(ctx context.Context, js jetstream.JetStream, m jetstream.Msg, timeout time.Duration) error {
	md, err := m.Metadata()
	if err != nil {
		return err
	}
	key := m.Headers().Get(messages.HeaderMsgID)
	seq := md.Sequence.Stream
	ev := nats.NewMsg(baselineEventsPrefix + m.Subject()[strings.LastIndexByte(m.Subject(), '.')+1:])
	ev.Data = m.Data()
	ev.Header.Set(messages.HeaderCommandKey, key)
	ev.Header.Set(messages.HeaderCommandSeq, strconv.FormatUint(seq, 10))
	ev.Header.Set(messages.HeaderMsgID, messages.EventMsgID(key, seq))
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := js.PublishMsg(ctx, ev); err != nil {
		_ = m.NakWithDelay(time.Second)
		return err
	}
	return m.DoubleAck(ctx)
}
