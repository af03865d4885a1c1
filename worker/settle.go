package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/tracing"
)

// maxReasonBytes bounds the Wallets-Dlq-Reason header.
const maxReasonBytes = 1024

// settle is the one place a decided delivery is settled: the dead letter (for
// codes that dead-letter), then the outcome event, then the ack (DoubleAck) or
// the termination (TermWithReason). It runs on a context that shutdown does
// not cancel. If a publish fails the command is retried: the redelivery
// replays the same outcome under the same event ID.
func (w *Worker) settle(ctx context.Context, d *delivery, o handlers.Result) {
	ctx = d.withSpan(ctx)
	d.traceSettled(o)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.SettleTimeout)
	defer cancel()

	key := messages.SafeHeaderValue(firstHeader(d, messages.HeaderMsgID), messages.MaxKeyBytes)
	walletID, subject, body, err := w.event(o)
	if err != nil { // a Result is plain data; this is a programming error
		w.log.Error("cannot encode outcome event", w.logAttrs(d, key, "error", err)...)
		w.nak(d, w.cfg.Backoff.Delay(d.delivered), retryTransient)
		return
	}
	code := o.Code()
	if code.DeadLetters() {
		dl := w.deadLetter(d, walletID, code, o.Reason())
		tracing.Inject(sctx, dl.Header) // replaces the command's traceparent with the worker span's
		if err := w.publishOutcome(sctx, d, dl, w.publish); err != nil {
			w.log.Warn("dead letter publish failed; will retry", w.logAttrs(d, key, "error", err)...)
			w.nak(d, w.cfg.Backoff.Delay(d.delivered), retryTransient)
			return
		}
	}
	ev := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
	ev.Header.Set(messages.HeaderCommandKey, key)
	ev.Header.Set(messages.HeaderCommandSeq, strconv.FormatUint(d.seq, 10))
	ev.Header.Set(messages.HeaderMsgID, messages.EventMsgID(key, d.seq))
	tracing.Inject(sctx, ev.Header)
	publish := w.publish
	if d.eventTurn != nil || d.eventDone != nil {
		publish = func(ctx context.Context, m *nats.Msg) error { return w.publishInTurn(ctx, d, m) }
	}
	if err := w.publishOutcome(sctx, d, ev, publish); err != nil {
		w.log.Warn("outcome event publish failed; will retry", w.logAttrs(d, key, "error", err)...)
		w.nak(d, w.cfg.Backoff.Delay(d.delivered), retryTransient)
		return
	}
	if !w.takeSettle(d) {
		return
	}
	if code.DeadLetters() {
		if err := d.msg.TermWithReason(string(code)); err != nil {
			w.log.Warn("term failed; the redelivery will settle it again", w.logAttrs(d, key, "error", err)...)
		}
		w.settled(d, o)
		w.log.Warn("command dead-lettered", w.logAttrs(d, key, "outcome", code, "reason", o.Reason())...)
		return
	}
	actx, span := w.startAck(sctx, d)
	err = d.msg.DoubleAck(actx)
	endClient(span, err)
	if err != nil {
		// The outcome is stored; the redelivery finds it (storedOutcome)
		// and is acknowledged without deciding again.
		w.log.Warn("ack failed; the redelivery will find the stored outcome", w.logAttrs(d, key, "error", err)...)
		return
	}
	w.settled(d, o)
	if code != "" {
		w.log.Info("command rejected", w.logAttrs(d, key, "outcome", code, "reason", o.Reason())...)
	} else if w.log.Enabled(context.Background(), slog.LevelDebug) {
		w.log.Debug("command settled", w.logAttrs(d, key, "outcome", o.Label())...)
	}
}

// publishOutcome publishes m, a settle's dead letter or outcome event. On
// the retry budget's last delivery (or past it) a failed publish is tried
// again in process until ctx ends, the lease held: its redelivery would be
// past the budget, where nothing is written and only what Config.Replays
// find applied replays (a rejection wrote nothing to find, say), so it
// could settle RETRIES_EXHAUSTED for what this delivery decided. On earlier
// deliveries it is left to the redelivery, which replays.
func (w *Worker) publishOutcome(ctx context.Context, d *delivery, m *nats.Msg, publish func(context.Context, *nats.Msg) error) error {
	wait := settleRetryMin
	for {
		err := publish(ctx, m)
		if err == nil || d.delivered < uint64(w.cfg.MaxDeliver) {
			return err
		}
		w.log.Warn("publish failed on the last delivery; trying again", w.logAttrs(d, firstHeader(d, messages.HeaderMsgID), "error", err)...)
		if errors.Is(err, errTurnLost) {
			// The command before it in its chain has no event yet, and
			// will settle later: this one's goes out of turn rather than
			// be replaced by RETRIES_EXHAUSTED. Its own turn still ends
			// unwritten (handle does that), so the commands after it wait
			// for the earlier one as usual: only this event is out of
			// order.
			publish = w.publish
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, settleRetryMax)
	}
}

// The waits between the publishes of publishOutcome.
const (
	settleRetryMin = 50 * time.Millisecond
	settleRetryMax = time.Second
)

// takeSettle claims d's one settle (ack or term) for the caller: false when
// another took it, or when a test's beforeAck hook loses it (as if the ack
// were lost on the way).
func (w *Worker) takeSettle(d *delivery) bool {
	if w.hooks.beforeAck != nil {
		if err := w.hooks.beforeAck(d); err != nil {
			d.settled.Store(true)
			return false
		}
	}
	return d.settled.CompareAndSwap(false, true)
}

// settled counts a settled delivery in the stats and the metrics.
func (w *Worker) settled(d *delivery, o handlers.Result) {
	w.cfg.Metrics.settled(d, o, time.Now())
	switch {
	case o.Code() == "" && o.Replayed():
		w.stats.Replayed.Add(1)
	case o.Code() == "":
		w.stats.Created.Add(1)
	default:
		w.stats.Rejected.Add(1)
		if o.Code().DeadLetters() {
			w.stats.DeadLettered.Add(1)
		}
	}
}

// event returns the outcome event of o: the wallet it names, its subject
// and its body.
func (w *Worker) event(o handlers.Result) (walletID, subject string, body []byte, err error) {
	name, walletID, v := o.Event()
	if name == "" || v == nil {
		return "", "", nil, fmt.Errorf("outcome %T has no event", o)
	}
	body, err = json.Marshal(v)
	return walletID, messages.EventSubject(name, walletID), body, err
}

// deadLetter copies the command, body and headers intact, with the dead-letter
// headers added.
func (w *Worker) deadLetter(d *delivery, walletID string, code messages.Code, reason string) *nats.Msg {
	h := nats.Header{}
	for k, vs := range d.msg.Headers() {
		if strings.HasPrefix(k, "Nats-Expected-") {
			// A condition of the command's publish (the producer's
			// WithExpectStream), stored with it but not part of it: on
			// the dead letter's publish it would make JetStream refuse it.
			continue
		}
		h[k] = append([]string(nil), vs...)
	}
	h.Set(messages.HeaderDLQCode, string(code))
	h.Set(messages.HeaderDLQReason, messages.SafeHeaderValue(reason, maxReasonBytes))
	h.Set(messages.HeaderOriginalSubject, d.subject)
	h.Set(messages.HeaderOriginalSeq, strconv.FormatUint(d.seq, 10))
	h.Set(messages.HeaderDeliveries, strconv.FormatUint(d.delivered, 10))
	return &nats.Msg{Subject: messages.KindDLQSubject(d.kind, walletID), Header: h, Data: d.msg.Data()}
}

func (w *Worker) publish(ctx context.Context, m *nats.Msg) (err error) {
	ctx, span := w.startPublish(ctx, m)
	defer func() { endClient(span, err) }()
	if w.hooks.publish != nil {
		_, err = w.hooks.publish(ctx, m)
	} else {
		_, err = w.js.PublishMsg(ctx, m)
	}
	return err
}

// publishInTurn publishes the outcome event of a command of a chain (see
// delivery.eventTurn): once the event before it is written to the
// connection, and it lets the next one go as soon as its own is written,
// before JetStream acknowledges it. The server stores what one connection
// publishes in the order it was written, so the chain's events are stored
// in order without waiting for one acknowledgement after another.
//
// When the event before it will not be written (that command's settle
// failed, or it was handed back), or its turn does not come within half
// the settle timeout, this one is not published either: the command is
// retried, and its redelivery replays its outcome after the one before it.
// An event refused by JetStream after it was written is the exception:
// the events after it may then be stored first (docs/ordering.md).
func (w *Worker) publishInTurn(ctx context.Context, d *delivery, m *nats.Msg) (err error) {
	if d.eventTurn != nil {
		t := time.NewTimer(w.cfg.SettleTimeout / 2)
		select {
		case <-d.eventTurn.done:
		case <-t.C:
		}
		t.Stop()
		select {
		case <-d.eventTurn.done:
			if !d.eventTurn.written {
				return errTurnLost
			}
		default:
			return errTurnLost
		}
	}
	written := func(ok bool) {
		if d.eventDone != nil {
			d.eventDone.end(ok)
			d.eventDone = nil
		}
	}
	if w.hooks.publish != nil {
		err = w.publish(ctx, m)
		written(err == nil)
		return err
	}
	ctx, span := w.startPublish(ctx, m)
	defer func() { endClient(span, err) }()
	f, err := w.js.PublishMsgAsync(m)
	written(err == nil)
	if err != nil {
		return err
	}
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// errTurnLost is the publish error of an event whose predecessor in its
// chain was not written.
var errTurnLost = errors.New("the event of the command before it in its chain was not written")
