package producer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/messages"
)

// A key reused inside the duplicate window never reaches a worker: JetStream
// drops the publish and answers with the sequence of the command first stored
// under the key, which may be another command (other fields, another wallet).
// The outcome awaited is then the original's, and it says nothing true about
// the command just sent. Reconcile compares the two and, when they differ,
// answers KEY_REUSED on the publisher's side, as the worker would once the
// window has passed.

// Reconcile returns the outcome of the command ack was published for, given
// stored, the outcome of the command stored at ack.Seq. For a fresh publish,
// and for a true duplicate (the original is the same command), that is stored
// itself. For a Duplicate whose original was another command, it is a
// KEY_REUSED rejection decided here (ByPublisher, with Original set to
// stored).
//
// What is compared is what the original's event tells: the wallet, name,
// priority and expiry of a balance-created event; the wallet and name of a
// rejected one (a rejection does not carry the rest). A command that Publish
// accepted can never be INVALID_COMMAND, so an original rejected as invalid
// was another command. stored is returned as it is when it is not an outcome
// (it never arrived) or ack carries no Command (an Ack built by hand).
func (a Ack) Reconcile(stored Outcome) Outcome {
	if !a.Duplicate || a.Command.WalletID == "" || stored.ByPublisher || (stored.Created == nil && stored.Rejected == nil) {
		return stored
	}
	if sameCommand(a.Command, stored) {
		return stored
	}
	original := stored
	ev := messages.BalanceCreateRejected{
		Key: a.Key, WalletID: a.Command.WalletID, Name: a.Command.Name, Code: messages.CodeKeyReused,
		Message: fmt.Sprintf("the key was used within the duplicate window for another command (sequence %d: %s); "+
			"JetStream dropped this publish and stored nothing for it", a.Seq, describe(stored)),
	}
	data, _ := json.Marshal(ev) // plain strings: cannot fail
	return Outcome{Rejected: &ev, CommandSeq: stored.CommandSeq, Data: data, ByPublisher: true, Original: &original}
}

func sameCommand(cmd messages.CreateBalance, o Outcome) bool {
	if c := o.Created; c != nil {
		return c.WalletID == cmd.WalletID && c.Balance.Equal(cmd.Balance())
	}
	r := o.Rejected
	return r.Code != messages.CodeInvalidCommand && r.WalletID == cmd.WalletID && r.Name == cmd.Name
}

// describe says in words what an original outcome was about.
func describe(o Outcome) string {
	if c := o.Created; c != nil {
		expires := "never expires"
		if c.Balance.ExpiresAt != nil {
			expires = "expires " + c.Balance.ExpiresAt.UTC().Format(time.RFC3339Nano)
		}
		return fmt.Sprintf("wallet %q, balance %q, priority %d, %s", c.WalletID, c.Balance.Name, c.Balance.Priority, expires)
	}
	r := o.Rejected
	return fmt.Sprintf("wallet %q, balance %q, rejected %s", r.WalletID, r.Name, r.Code)
}

// AwaitAck returns the outcome of the command ack was published for: Await's
// outcome for a fresh publish, and for a Duplicate the outcome of the
// original, found by its sequence whatever its wallet, then compared with
// ack.Command (Reconcile): a true duplicate gets the original's outcome, a
// key reused for another command a KEY_REUSED rejection decided here.
func (p *Producer) AwaitAck(ctx context.Context, ack Ack) (Outcome, error) {
	if !ack.Duplicate && ack.Command.WalletID != "" {
		return p.Await(ctx, ack.Command.WalletID, ack.Seq)
	}
	// The original was stored within the duplicate window before now, on
	// any wallet's subject, and its event after it.
	since, err := lookbackStart(ctx, p.js, -1)
	if err != nil {
		return Outcome{}, fmt.Errorf("producer: outcome of command %d: %w", ack.Seq, orCause(ctx, err))
	}
	// Every kind's events (no filter: the consumer auth.conf grants): the
	// original may be a command of another kind, whose event is no
	// create-balance outcome.
	want := strconv.FormatUint(ack.Seq, 10)
	m, err := p.scanMsg(ctx, nil, &since, func(m jetstream.Msg) bool {
		_, ok := eventOf(m)
		return ok && m.Headers().Get(messages.HeaderCommandSeq) == want
	})
	if err != nil {
		return Outcome{}, fmt.Errorf("producer: outcome of command %d: %w", ack.Seq, err)
	}
	e, _ := eventOf(m)
	return ack.reconcileEvent(e)
}

// reconcileEvent is Reconcile given the original's event, of any kind: the
// event of a command of another kind makes a duplicate KEY_REUSED.
func (a Ack) reconcileEvent(e event) (Outcome, error) {
	if a.Duplicate && !isBalanceOutcome(e.subject) {
		return a.reusedBy(e), nil
	}
	o, err := e.outcome()
	if err != nil {
		return o, err
	}
	return a.Reconcile(o), nil
}

// isBalanceOutcome says whether subject is a create-balance outcome's.
func isBalanceOutcome(subject string) bool {
	return strings.HasPrefix(subject, createdPrefix) || strings.HasPrefix(subject, rejectedPrefix)
}

// reusedBy is the KEY_REUSED decided here for a duplicate whose original,
// settled by e, was a command of another kind.
func (a Ack) reusedBy(e event) Outcome {
	ev := messages.BalanceCreateRejected{
		Key: a.Key, WalletID: a.Command.WalletID, Name: a.Command.Name, Code: messages.CodeKeyReused,
		Message: fmt.Sprintf("the key was used within the duplicate window for another command (sequence %d, settled by %s); "+
			"JetStream dropped this publish and stored nothing for it", a.Seq, e.subject),
	}
	data, _ := json.Marshal(ev) // plain strings: cannot fail
	// The original's outcome is another kind's: its event, undecoded.
	original := Outcome{Subject: e.subject, Seq: e.seq, CommandSeq: e.commandSeq, Data: e.data}
	return Outcome{Rejected: &ev, CommandSeq: e.commandSeq, Data: data, ByPublisher: true, Original: &original}
}

// AwaitAcks is AwaitMany for published commands: the outcome of each, in the
// same order, with every Duplicate reconciled with its command (Reconcile).
// An Awaiter reads every wallet's events, so the original of a duplicate is
// found whatever its wallet.
func (a *Awaiter) AwaitAcks(ctx context.Context, acks []Ack) ([]Outcome, error) {
	seqs := make([]uint64, len(acks))
	for i, ack := range acks {
		seqs[i] = ack.Seq
	}
	evs, err := a.awaitEvents(ctx, seqs)
	outs := make([]Outcome, len(acks))
	for i, e := range evs {
		if e.subject == "" {
			continue
		}
		o, derr := acks[i].reconcileEvent(e)
		outs[i] = o
		err = errors.Join(err, derr)
	}
	return outs, err
}
