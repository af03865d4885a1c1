package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/messages"
)

// publishWindowed publishes msg(0) … msg(n-1) asynchronously, in order, with
// at most window of them awaiting their acknowledgement at once. It does not
// wait for the last ones.
func publishWindowed(ctx context.Context, js jetstream.JetStream, n, window int, msg func(i int) *nats.Msg) error {
	for i := range n {
		if i%window == window-1 {
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if _, err := js.PublishMsgAsync(msg(i)); err != nil {
			return err
		}
	}
	return nil
}

// errNoProgress is what eventWatch.await returns when no new event came for
// noProgressFor.
var errNoProgress = errors.New("no new outcome event")

// noProgressFor is how long eventWatch.await waits for a new event.
const noProgressFor = 2 * time.Minute

// awaitPoll is how often eventWatch.await asks for the stream's state. The
// phase's end is the last event's store time, not the poll that saw it, so
// a slow poll does not lengthen the phase; a fast one would: every poll is
// a stream info request the server under test answers (polling every 5 ms
// took a tenth of the CPU of a run against the real ledger).
const awaitPoll = 50 * time.Millisecond

// eventWatch counts a phase's outcome events in WALLETS_EVENTS itself, which
// holds one event per command (a redelivery's second one is dropped by its
// ID), rather than through a consumer: an ordered consumer was seen to skip
// messages on a starved machine (270 events stored, 264 delivered). The
// phase's events are then read back by sequence.
type eventWatch struct {
	s      jetstream.Stream
	before jetstream.StreamState // the stream when the watch began
}

// watchEvents begins a watch at the stream's current end.
func watchEvents(ctx context.Context, js jetstream.JetStream) (*eventWatch, error) {
	s, err := js.Stream(ctx, messages.StreamEvents)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	return &eventWatch{s: s, before: info.State}, nil
}

// await polls the stream until it holds n events more than when the watch
// began. It fails with errNoProgress, saying how many came, when none came
// for noProgressFor.
func (w *eventWatch) await(ctx context.Context, n int) error {
	stored, progressed := uint64(0), time.Now()
	for stored < uint64(n) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(awaitPoll):
		}
		info, err := w.s.Info(ctx)
		if err != nil {
			return err
		}
		if now := info.State.Msgs - w.before.Msgs; now > stored {
			stored, progressed = now, time.Now()
		} else if time.Since(progressed) > noProgressFor {
			return fmt.Errorf("%d of %d outcomes: %w for %s", stored, n, errNoProgress, noProgressFor)
		}
	}
	return nil
}

// each reads the first n events stored since the watch began, in order,
// and returns the latest store time among them: when the phase's last
// outcome was published.
func (w *eventWatch) each(ctx context.Context, n int, fn func(*jetstream.RawStreamMsg)) (time.Time, error) {
	var last time.Time
	for seq := w.before.LastSeq + 1; seq <= w.before.LastSeq+uint64(n); seq++ {
		m, err := w.s.GetMsg(ctx, seq)
		if err != nil {
			return last, fmt.Errorf("event %d: %w", seq, err)
		}
		if m.Time.After(last) {
			last = m.Time
		}
		fn(m)
	}
	return last, nil
}
