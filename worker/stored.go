package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wallets-worker/wallets-worker/messages"
)

// storedOutcome reports whether the outcome event of d, a redelivery, is
// already in WALLETS_EVENTS: the newest event of its wallet names d's stream
// sequence in its Wallets-Command-Seq header. Its first settle stored the
// event and lost the ack (a crash, a connection lost, a term that never
// arrived), and deciding again could contradict what the event says: a
// rejection whose cause went away since (funds arrived, the wallet was made
// through the wallets API) would now apply, and its event be dropped as a
// duplicate of the stored rejection.
//
// A found event is proof: it carries this command's sequence and key. Not
// finding it is not: a later command of the wallet may have settled since
// (without --order wallet, among the commands a chain decided together,
// after a command settled past its budget or out of turn, on the wallet
// messages.UnknownWallet), or the event aged out of the stream
// (EventsMaxAge); docs/guarantees.md lists these. The command is then
// decided again, as it was before this check, and replays what the ledger
// holds. An error (the stream unreachable) is also "not found".
//
// The message get goes to the stream's leader through the JetStream API:
// the events stream allows no direct gets, and a replica could lag.
func (w *Worker) storedOutcome(ctx context.Context, d *delivery, wallet, key string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, storedOutcomeTimeout)
	defer cancel()
	h, err := w.newestEvent(ctx, wallet)
	if err != nil || h == nil {
		return false, err
	}
	// The sequence, and the key: a commands stream deleted and made again
	// numbers its commands anew, while the events stream keeps the old
	// ones' events.
	seq, err := strconv.ParseUint(h.Get(messages.HeaderCommandSeq), 10, 64)
	return err == nil && seq == d.seq && h.Get(messages.HeaderCommandKey) == messages.SafeHeaderValue(key, messages.MaxKeyBytes), nil
}

// errNoMessage is the JetStream API's error code for a message get that
// found nothing.
const errNoMessage = 10037

// newestEvent returns the headers of the newest outcome event of wallet, nil
// when it has none.
func (w *Worker) newestEvent(ctx context.Context, wallet string) (nats.Header, error) {
	req, err := json.Marshal(map[string]string{"last_by_subj": messages.EventSubject("*", wallet)})
	if err != nil {
		return nil, err
	}
	resp, err := w.js.Conn().RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+messages.StreamEvents, req)
	if err != nil {
		return nil, err
	}
	var body struct {
		Message *struct {
			Header []byte `json:"hdrs"`
		} `json:"message"`
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &body); err != nil {
		return nil, fmt.Errorf("message get answer: %w", err)
	}
	switch {
	case body.Error != nil && body.Error.ErrCode == errNoMessage:
		return nil, nil // no event of this wallet
	case body.Error != nil:
		return nil, fmt.Errorf("message get: %d %s", body.Error.Code, body.Error.Description)
	case body.Message == nil || len(body.Message.Header) == 0:
		return nil, errors.New("message get: no message in the answer")
	}
	h, err := nats.DecodeHeadersMsg(body.Message.Header)
	if err != nil {
		return nil, fmt.Errorf("message get: headers: %w", err)
	}
	return h, nil
}

// storedOutcomeTimeout bounds the look for a stored outcome: a stream that
// does not answer in time leaves the command to be decided again.
const storedOutcomeTimeout = 2 * time.Second

// settledBefore acknowledges d, whose outcome event an earlier delivery
// stored, or (gone) whose command another delivery settled: it is no longer
// in the commands stream. Nothing is decided, written or published again.
func (w *Worker) settledBefore(ctx context.Context, d *delivery, key string, gone bool) {
	ctx = d.withSpan(ctx)
	if d.span != nil {
		if gone {
			d.span.AddEvent("command settled by another delivery")
		} else {
			d.span.AddEvent("outcome stored by an earlier delivery")
		}
	}
	d.traceOutcome(outcomeSettledBefore, "", nil)
	if !w.takeSettle(d) {
		return
	}
	if gone {
		// Nothing left to acknowledge, and nothing will be redelivered:
		// the ack only closes this copy's bookkeeping.
		_ = d.msg.Ack()
		w.log.Info("command settled by another delivery while this one waited; not decided again", w.logAttrs(d, key)...)
	} else {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.SettleTimeout)
		defer cancel()
		if err := d.msg.DoubleAck(sctx); err != nil {
			w.log.Warn("ack failed; the redelivery will find the outcome again", w.logAttrs(d, key, "error", err)...)
			return
		}
		w.log.Debug("outcome already stored by an earlier delivery; acknowledged", w.logAttrs(d, key)...)
	}
	w.stats.SettledBefore.Add(1)
	w.cfg.Metrics.settledAs(d, outcomeSettledBefore, time.Now())
}

// kindLabel is the kind label of d's metrics.
func (d *delivery) kindLabel() string {
	if d.kind == "" {
		return messages.KindUnknown
	}
	return d.kind
}
