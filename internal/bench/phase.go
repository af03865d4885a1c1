package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/messages"
)

// Phase is what one side (the worker or the baseline) did with the workload.
type Phase struct {
	// Published is how many commands were published, Duplicates how many of
	// them JetStream reported as duplicates, Stored the others.
	Published  int `json:"published"`
	Duplicates int `json:"duplicates"`
	Stored     int `json:"stored"`
	// Outcomes is how many distinct stored commands (by Wallets-Command-Seq)
	// have an outcome event in the events stream.
	Outcomes int `json:"outcomes"`
	// Seconds runs from the first publish (live) or the consumer's start
	// (drain) to the storage of the last outcome event.
	Seconds           float64 `json:"seconds"`
	CommandsPerSecond float64 `json:"commandsPerSecond"`
	// Latency runs from a command's publish (its slot with --rate) to the
	// storage of its outcome event.
	Latency Latency `json:"latencyMs"`
	// PublishLagMs is how late the last publish left against its slot with
	// --rate: a publisher that cannot keep the rate shows here.
	PublishLagMs float64 `json:"publishLagMs"`
	// PeakHeapBytes and PeakRSSBytes are sampled every 50ms during the phase
	// and cover the whole process, the embedded NATS server included.
	PeakHeapBytes uint64 `json:"peakHeapBytes"`
	PeakRSSBytes  uint64 `json:"peakRSSBytes"`
}

// side is what a phase measures: where its commands go, how they are
// consumed, and where their outcome events land.
type side struct {
	name        string
	subject     func(walletID string) string
	eventStream string
	// start starts consuming; stop stops and returns the consumer's error,
	// exited (nil when it cannot happen) is closed if the consumer stops on
	// its own.
	start func() (stop func() error, exited <-chan struct{}, err error)
	// profile, when set, brackets the consuming part of the phase.
	profile func() (stop func() error, err error)
	// midway, when set, runs once half the stored commands have their
	// outcome.
	midway func() error
}

// phase publishes the items of w at idx through s and waits until every
// stored one has its outcome event.
func (r *runner) phase(ctx context.Context, s side, idx []int) (Phase, error) {
	w := r.workload
	starts := make([]atomic.Int64, len(w.items))
	obs := &observer{keys: w.byKey, starts: starts, seen: map[uint64]struct{}{}, want: -1, done: make(chan struct{})}
	midwayErr := make(chan error, 1)
	if s.midway != nil {
		obs.half, obs.atHalf = len(idx)/2, func() { midwayErr <- s.midway() }
	} else {
		midwayErr <- nil
	}
	oc, err := r.admin.OrderedConsumer(ctx, s.eventStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return Phase{}, fmt.Errorf("%s: read %s: %w", s.name, s.eventStream, err)
	}
	cc, err := oc.Consume(obs.onEvent)
	if err != nil {
		return Phase{}, fmt.Errorf("%s: read %s: %w", s.name, s.eventStream, err)
	}
	defer cc.Stop()

	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	r.mem.peaks() // a phase's peaks are its own

	stopProfile := func() error { return nil }
	startProfile := func() error {
		if s.profile == nil {
			return nil
		}
		stop, err := s.profile()
		if err != nil {
			return err
		}
		stopProfile = stop
		return nil
	}

	var (
		pub    published
		clock  time.Time
		stop   func() error
		exited <-chan struct{}
	)
	if r.cfg.Mode == ModeLive {
		if err := startProfile(); err != nil {
			return Phase{}, err
		}
		if stop, exited, err = s.start(); err != nil {
			_ = stopProfile()
			return Phase{}, fmt.Errorf("%s: %w", s.name, err)
		}
		pub, err = r.publish(ctx, s, idx, starts)
		clock = pub.t0
	} else {
		if pub, err = r.publish(ctx, s, idx, starts); err == nil {
			if err = startProfile(); err != nil {
				return Phase{}, err
			}
			clock = time.Now()
			stop, exited, err = s.start()
		}
	}
	if err != nil {
		if stop != nil {
			_ = stop()
		}
		_ = stopProfile()
		return Phase{}, fmt.Errorf("%s: %w", s.name, err)
	}

	obs.expect(pub.stored)
	var waitErr error
	select {
	case <-obs.done:
	case <-exited:
		waitErr = fmt.Errorf("%s: stopped on its own after %d of %d outcomes", s.name, obs.count(), pub.stored)
	case <-ctx.Done():
		waitErr = fmt.Errorf("%s: %d of %d outcomes after %s: %w", s.name, obs.count(), pub.stored, r.cfg.Timeout, context.Cause(ctx))
	}
	heap, rss := r.mem.peaks()
	profErr := stopProfile()
	stopErr := stop()
	if waitErr == nil {
		profErr = errors.Join(profErr, <-midwayErr)
	}
	if err := errors.Join(waitErr, profErr, stopErr); err != nil {
		return Phase{}, err
	}

	lat, last, n := obs.result()
	p := Phase{
		Published: len(idx), Duplicates: pub.duplicates, Stored: pub.stored, Outcomes: n,
		Latency: latencyOf(lat), PublishLagMs: ms(pub.lag),
		PeakHeapBytes: heap, PeakRSSBytes: rss,
	}
	if elapsed := last.Sub(clock); elapsed > 0 {
		p.Seconds = elapsed.Seconds()
		p.CommandsPerSecond = float64(n) / p.Seconds
	}
	return p, nil
}

// published is what the publisher saw acknowledged.
type published struct {
	stored, duplicates int
	t0                 time.Time     // the first publish's slot
	lag                time.Duration // how late the last publish was
}

// publish sends the items at idx with async publishes on the publisher's own
// connection: as fast as the bounded number of outstanding acks lets it, or
// open loop at --rate. starts receives, for each stored item, the moment it
// was due.
func (r *runner) publish(ctx context.Context, s side, idx []int, starts []atomic.Int64) (published, error) {
	var (
		stored, dups atomic.Int64
		pending      sync.WaitGroup
		errMu        sync.Mutex
		firstErr     error
	)
	fail := func(err error) {
		errMu.Lock()
		defer errMu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
	}
	maxPending := r.cfg.MaxPending
	if r.cfg.Rate > 0 {
		// Open loop: the schedule, not the acks, paces the publisher.
		maxPending = 1 << 20
	}
	js, err := jetstream.New(r.pub,
		jetstream.WithPublishAsyncMaxPending(maxPending),
		jetstream.WithPublishAsyncTimeout(r.cfg.Timeout),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, _ *nats.Msg, ack *jetstream.PubAck) {
			if ack.Duplicate {
				dups.Add(1)
			} else {
				stored.Add(1)
			}
			pending.Done()
		}),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			fail(fmt.Errorf("publish %s: %w", m.Header.Get(messages.HeaderMsgID), err))
			pending.Done()
		}),
	)
	if err != nil {
		return published{}, err
	}

	w := r.workload
	var out published
	out.t0 = time.Now()
	for n, i := range idx {
		it := &w.items[i]
		due := time.Now()
		if r.cfg.Rate > 0 {
			due = out.t0.Add(time.Duration(float64(n) / r.cfg.Rate * float64(time.Second)))
			if err := sleep(ctx, time.Until(due)); err != nil {
				return out, err
			}
			out.lag = max(out.lag, time.Since(due))
		}
		if it.kind != duplicate {
			starts[i].Store(due.UnixNano())
		}
		m := nats.NewMsg(s.subject(it.cmd.WalletID))
		m.Header.Set(messages.HeaderMsgID, it.key)
		m.Data = it.body
		pending.Add(1)
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(r.cfg.Timeout)); err != nil {
			pending.Done()
			return out, fmt.Errorf("publish %s: %w", it.key, err)
		}
	}
	acked := make(chan struct{})
	go func() { pending.Wait(); close(acked) }()
	select {
	case <-acked:
	case <-ctx.Done():
		return out, fmt.Errorf("waiting for publish acks: %w", context.Cause(ctx))
	}
	if firstErr != nil {
		return out, firstErr
	}
	out.stored, out.duplicates = int(stored.Load()), int(dups.Load())
	return out, nil
}

// observer counts outcome events once per stored command and measures each
// command's latency.
type observer struct {
	keys   map[string]int // read only
	starts []atomic.Int64

	mu      sync.Mutex
	seen    map[uint64]struct{}
	lat     []time.Duration
	last    time.Time
	want    int // -1 until the publisher knows how many were stored
	done    chan struct{}
	closed  bool
	unknown int // events whose key or sequence this run did not publish
	// atHalf, when set, runs once, in its own goroutine, when half outcomes
	// have been seen.
	half   int
	atHalf func()
}

func (o *observer) onEvent(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	h := m.Headers()
	seq, err := strconv.ParseUint(h.Get(messages.HeaderCommandSeq), 10, 64)
	i, known := o.keys[h.Get(messages.HeaderCommandKey)]
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil || !known {
		o.unknown++
		return
	}
	if _, again := o.seen[seq]; again {
		return // the events stream deduplicates; this cannot happen
	}
	o.seen[seq] = struct{}{}
	if start := o.starts[i].Load(); start != 0 {
		o.lat = append(o.lat, md.Timestamp.Sub(time.Unix(0, start)))
	}
	if md.Timestamp.After(o.last) {
		o.last = md.Timestamp
	}
	if o.atHalf != nil && len(o.seen) >= o.half {
		go o.atHalf()
		o.atHalf = nil
	}
	o.check()
}

func (o *observer) expect(n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.want = n
	o.check()
}

func (o *observer) check() {
	if !o.closed && o.want >= 0 && len(o.seen) >= o.want {
		o.closed = true
		close(o.done)
	}
}

func (o *observer) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.seen)
}

func (o *observer) result() (lat []time.Duration, last time.Time, n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.lat, o.last, len(o.seen)
}
