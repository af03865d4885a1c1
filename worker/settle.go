package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/telemetry"
	"github.com/wallets-worker/wallets-worker/messages"
)

// maxReasonBytes bounds the Wallets-Dlq-Reason header.
const maxReasonBytes = 1024

// settle is the one place a decided delivery is settled: the dead letter (for
// codes that dead-letter), then the outcome event, then the ack (DoubleAck) or
// the termination (TermWithReason). It runs on a context that shutdown does
// not cancel. If a publish fails the command is retried: the redelivery
// replays the same outcome under the same event ID.
func (w *Worker) settle(ctx context.Context, d *delivery, o handlers.Outcome) {
	ctx = d.withSpan(ctx)
	d.traceSettled(o)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.SettleTimeout)
	defer cancel()

	key, walletID, subject, body, err := w.event(d, o)
	if err != nil { // an Outcome is plain data; this is a programming error
		w.log.Error("cannot encode outcome event", w.logAttrs(d, key, "error", err)...)
		w.nak(d, w.cfg.Backoff.Delay(d.delivered), retryTransient)
		return
	}
	code := o.Code()
	if code.DeadLetters() {
		dl := w.deadLetter(d, walletID, code, o.Rejected.Message)
		telemetry.Inject(sctx, dl.Header) // replaces the command's traceparent with the worker span's
		if err := w.publish(sctx, dl); err != nil {
			w.log.Warn("dead letter publish failed; will retry", w.logAttrs(d, key, "error", err)...)
			w.nak(d, w.cfg.Backoff.Delay(d.delivered), retryTransient)
			return
		}
	}
	ev := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
	ev.Header.Set(messages.HeaderCommandKey, key)
	ev.Header.Set(messages.HeaderCommandSeq, strconv.FormatUint(d.seq, 10))
	ev.Header.Set(messages.HeaderMsgID, messages.EventMsgID(key, d.seq))
	telemetry.Inject(sctx, ev.Header)
	if err := w.publish(sctx, ev); err != nil {
		w.log.Warn("outcome event publish failed; will retry", w.logAttrs(d, key, "error", err)...)
		w.nak(d, w.cfg.Backoff.Delay(d.delivered), retryTransient)
		return
	}
	if w.hooks.beforeAck != nil {
		if err := w.hooks.beforeAck(d); err != nil {
			d.settled.Store(true) // as if the ack were lost on the way
			return
		}
	}
	if !d.settled.CompareAndSwap(false, true) {
		return
	}
	if code.DeadLetters() {
		if err := d.msg.TermWithReason(string(code)); err != nil {
			w.log.Warn("term failed; the redelivery will settle it again", w.logAttrs(d, key, "error", err)...)
		}
		w.settled(d, o)
		w.log.Warn("command dead-lettered", w.logAttrs(d, key, "outcome", code, "reason", o.Rejected.Message)...)
		return
	}
	actx, span := w.startAck(sctx)
	err = d.msg.DoubleAck(actx)
	endClient(span, err)
	if err != nil {
		// The outcome is stored; a redelivery replays it under the same
		// event ID, so JetStream drops the second event.
		w.log.Warn("ack failed; the redelivery will replay the outcome", w.logAttrs(d, key, "error", err)...)
		return
	}
	w.settled(d, o)
	if o.Created == nil {
		w.log.Info("command rejected", w.logAttrs(d, key, "outcome", code, "reason", o.Rejected.Message)...)
	} else if w.log.Enabled(context.Background(), slog.LevelDebug) {
		w.log.Debug("command settled", w.logAttrs(d, key, "outcome", OutcomeLabel(o))...)
	}
}

// settled counts a settled delivery in the stats and the metrics.
func (w *Worker) settled(d *delivery, o handlers.Outcome) {
	w.cfg.Metrics.settled(d, o, time.Now())
	switch {
	case o.Created != nil && o.Created.Replayed:
		w.stats.Replayed.Add(1)
	case o.Created != nil:
		w.stats.Created.Add(1)
	default:
		w.stats.Rejected.Add(1)
		if o.Code().DeadLetters() {
			w.stats.DeadLettered.Add(1)
		}
	}
}

// event returns the outcome event of o: the key and wallet it names, its
// subject and its body.
func (w *Worker) event(d *delivery, o handlers.Outcome) (key, walletID, subject string, body []byte, err error) {
	switch {
	case o.Created != nil:
		key, walletID = o.Created.Key, o.Created.WalletID
		subject = messages.BalanceCreatedSubject(walletID)
		body, err = json.Marshal(o.Created)
	case o.Rejected != nil:
		r := *o.Rejected
		r.Key = headerSafe(r.Key, messages.MaxKeyBytes)
		if r.Code == messages.CodeInvalidCommand {
			// An invalid body's walletID is not to be trusted (it may even
			// contradict the subject): the rejection goes where the
			// producer sent the command, to the subject's wallet, or to
			// UnknownWallet when the subject has none.
			r.WalletID = messages.WalletFromSubject(d.subject)
			if r.WalletID == messages.UnknownWallet {
				r.WalletID = ""
			}
		}
		key, walletID = r.Key, r.WalletID
		subject = messages.BalanceCreateRejectedSubject(walletID)
		body, err = json.Marshal(r)
	default:
		err = fmt.Errorf("outcome has neither Created nor Rejected")
	}
	return key, walletID, subject, body, err
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
	h.Set(messages.HeaderDLQReason, headerSafe(reason, maxReasonBytes))
	h.Set(messages.HeaderOriginalSubject, d.subject)
	h.Set(messages.HeaderOriginalSeq, strconv.FormatUint(d.seq, 10))
	h.Set(messages.HeaderDeliveries, strconv.FormatUint(d.delivered, 10))
	return &nats.Msg{Subject: messages.DLQSubject(walletID), Header: h, Data: d.msg.Data()}
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

// headerSafe makes s fit in a NATS header value: printable ASCII only (others
// become '?'), at most max bytes.
func headerSafe(s string, max int) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			clean = false
			break
		}
	}
	if clean && len(s) <= max {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < max; i++ {
		if c := s[i]; c >= 0x20 && c <= 0x7e {
			b.WriteByte(c)
		} else {
			b.WriteByte('?')
		}
	}
	return b.String()
}
