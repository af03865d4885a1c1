package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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

// baseline names the streams, consumer and subjects of a baseline: copies of
// the worker's, settings included, under other names. With claims set it
// also claims, as the worker does, in a bucket of that name.
type baseline struct {
	name, commands, events, consumer string
	commandsPrefix, eventsPrefix     string
	claims                           string
}

var (
	// plainBaseline is the least a worker that reports outcomes must do.
	plainBaseline = baseline{name: "baseline", commands: "BENCH_BASELINE_COMMANDS", events: "BENCH_BASELINE_EVENTS",
		consumer: "bench-baseline", commandsPrefix: "bench.baseline.commands.", eventsPrefix: "bench.baseline.events."}
	// claimBaseline also makes one claim per message: a create-if-absent in
	// a copy of the claims bucket, with the claim's TTL.
	claimBaseline = baseline{name: "baselineWithClaim", commands: "BENCH_CLAIMBASE_COMMANDS", events: "BENCH_CLAIMBASE_EVENTS",
		consumer: "bench-claimbase", commandsPrefix: "bench.claimbase.commands.", eventsPrefix: "bench.claimbase.events.",
		claims: "BENCH_CLAIMBASE_CLAIMS"}
)

func provisionBaseline(ctx context.Context, js jetstream.JetStream, c worker.Config, b baseline) error {
	for _, sc := range c.StreamConfigs() {
		switch sc.Name {
		case messages.StreamCommands:
			sc.Name, sc.Subjects = b.commands, []string{b.commandsPrefix + ">"}
		case messages.StreamEvents:
			sc.Name, sc.Subjects = b.events, []string{b.eventsPrefix + ">"}
		default:
			continue
		}
		sc.Description = "wallets-worker bench baseline"
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("provision %s: %w", sc.Name, err)
		}
	}
	cc := c.ConsumerConfig()
	cc.Durable, cc.FilterSubject, cc.Description = b.consumer, b.commandsPrefix+">", "wallets-worker bench baseline"
	if _, err := js.CreateOrUpdateConsumer(ctx, b.commands, cc); err != nil {
		return fmt.Errorf("provision %s: %w", b.consumer, err)
	}
	if b.claims != "" {
		if _, err := provisionBaselineClaims(ctx, js, c, b.claims); err != nil {
			return err
		}
	}
	return nil
}

// provisionBaselineClaims creates a bucket configured like the claims bucket
// under the name bucket.
func provisionBaselineClaims(ctx context.Context, js jetstream.JetStream, c worker.Config, bucket string) (jetstream.KeyValue, error) {
	kc := c.KeyValueConfig()
	kc.Bucket, kc.Description = bucket, "wallets-worker bench baseline"
	kv, err := js.CreateOrUpdateKeyValue(ctx, kc)
	if err != nil {
		return nil, fmt.Errorf("provision %s: %w", bucket, err)
	}
	return kv, nil
}

// baselineClaim claims for the command of key as the worker claims a new
// balance: a create-if-absent with a TTL, keyed by a SHA-256 (the worker's
// key is its balance's; the store is the same). A claim already there, a
// redelivery's own, is no error.
func baselineClaim(ctx context.Context, kv jetstream.KeyValue, key string, ttl time.Duration) error {
	sum := sha256.Sum256([]byte(key))
	_, err := kv.Create(ctx, hex.EncodeToString(sum[:]), []byte(key), jetstream.KeyTTL(ttl))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil
	}
	return err
}

// baselineSide is the least a worker that reports outcomes must do (with
// b.claims, and claims first-writer-wins as ours does): pull with the same
// consumer style and concurrency, publish one event per message
// (synchronously, PubAck checked, deduplicated by Nats-Msg-Id) and DoubleAck.
func (r *runner) baselineSide(ctx context.Context, nc *nats.Conn, b baseline) side {
	return side{
		name:        b.name,
		subject:     func(walletID string) string { return b.commandsPrefix + walletID },
		eventStream: b.events,
		start: func() (func() error, <-chan struct{}, error) {
			js, err := jetstream.New(nc)
			if err != nil {
				return nil, nil, err
			}
			cons, err := js.Consumer(ctx, b.commands, b.consumer)
			if err != nil {
				return nil, nil, err
			}
			var claims jetstream.KeyValue
			if b.claims != "" {
				if claims, err = js.KeyValue(ctx, b.claims); err != nil {
					return nil, nil, err
				}
			}
			h := baselineHandler{js: js, claims: claims, claimTTL: r.wcfg.WithDefaults().ClaimTTL,
				eventsPrefix: b.eventsPrefix, timeout: r.wcfg.WithDefaults().SettleTimeout,
				claimFor: r.workload.claims}
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
						if err := h.handle(ctx, m); err != nil {
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

// baselineHandler settles one message of a baseline.
type baselineHandler struct {
	js       jetstream.JetStream
	claims   jetstream.KeyValue // nil: no claim
	claimTTL time.Duration
	// claimFor says whether the command of a key claims: the worker claims
	// a balance it finds absent, not a replay's or a conflict's.
	claimFor     func(key string) bool
	eventsPrefix string
	timeout      time.Duration
}

func (h baselineHandler) handle(ctx context.Context, m jetstream.Msg) error {
	md, err := m.Metadata()
	if err != nil {
		return err
	}
	key := m.Headers().Get(messages.HeaderMsgID)
	seq := md.Sequence.Stream
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	if h.claims != nil && h.claimFor(key) {
		if err := baselineClaim(ctx, h.claims, key, h.claimTTL); err != nil {
			_ = m.NakWithDelay(time.Second)
			return err
		}
	}
	ev := nats.NewMsg(h.eventsPrefix + m.Subject()[strings.LastIndexByte(m.Subject(), '.')+1:])
	ev.Data = m.Data()
	ev.Header.Set(messages.HeaderCommandKey, key)
	ev.Header.Set(messages.HeaderCommandSeq, strconv.FormatUint(seq, 10))
	ev.Header.Set(messages.HeaderMsgID, messages.EventMsgID(key, seq))
	if _, err := h.js.PublishMsg(ctx, ev); err != nil {
		_ = m.NakWithDelay(time.Second)
		return err
	}
	return m.DoubleAck(ctx)
}
