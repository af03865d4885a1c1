package producer

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/messages"
)

// Outcome is the outcome event of one stored command. Exactly one of Created
// and Rejected is set.
type Outcome struct {
	// Created is set when the balance was created, or replayed.
	Created *messages.BalanceCreated
	// Rejected is set when the command was rejected; Rejected.Code says why.
	Rejected *messages.BalanceCreateRejected
	// Subject is the event's subject.
	Subject string
	// Seq is the event's sequence in WALLETS_EVENTS.
	Seq uint64
	// CommandSeq is the sequence in WALLETS_COMMANDS of the command it
	// settles (its Wallets-Command-Seq header).
	CommandSeq uint64
	// Data is the event's body as stored.
	Data []byte

	// ByPublisher is set on an outcome that no worker published: the
	// publish was a duplicate of another command stored under the same key
	// (Reconcile), so nothing was stored for it and it is rejected with
	// KEY_REUSED. Rejected and Data are then shaped as the worker's
	// rejected event, Subject and Seq are empty, CommandSeq is the
	// original's, and Original is the original's outcome.
	ByPublisher bool
	// Original is the outcome of the command the key was first stored with,
	// on a ByPublisher outcome.
	Original *Outcome
}

var (
	createdPrefix  = strings.TrimSuffix(messages.SubjectBalanceCreatedAll, "*")
	rejectedPrefix = strings.TrimSuffix(messages.SubjectBalanceRejectedAll, "*")
)

// event is an outcome event as read from WALLETS_EVENTS, decoded on demand.
type event struct {
	subject         string
	seq, commandSeq uint64
	data            []byte
}

// eventOf reads the event of m; ok is false for a message that settles no
// command (no Wallets-Command-Seq header).
func eventOf(m jetstream.Msg) (e event, ok bool) {
	md, err := m.Metadata()
	if err != nil {
		return event{}, false
	}
	return eventAt(m.Subject(), md.Sequence.Stream, m.Headers(), m.Data())
}

// eventAt is the event stored at seq; ok is false for a message that
// settles no command.
func eventAt(subject string, seq uint64, h nats.Header, data []byte) (e event, ok bool) {
	cs, err := strconv.ParseUint(h.Get(messages.HeaderCommandSeq), 10, 64)
	if err != nil {
		return event{}, false
	}
	return event{subject: subject, seq: seq, commandSeq: cs, data: data}, true
}

func (e event) outcome() (Outcome, error) {
	o := Outcome{Subject: e.subject, Seq: e.seq, CommandSeq: e.commandSeq, Data: e.data}
	switch {
	case strings.HasPrefix(e.subject, createdPrefix):
		var ev messages.BalanceCreated
		if err := json.Unmarshal(e.data, &ev); err != nil {
			return o, fmt.Errorf("producer: event %d on %s: %w", e.seq, e.subject, err)
		}
		o.Created = &ev
	case strings.HasPrefix(e.subject, rejectedPrefix):
		var ev messages.BalanceCreateRejected
		if err := json.Unmarshal(e.data, &ev); err != nil {
			return o, fmt.Errorf("producer: event %d on %s: %w", e.seq, e.subject, err)
		}
		o.Rejected = &ev
	default:
		return o, fmt.Errorf("producer: event %d on %s is not a CreateBalance outcome", e.seq, e.subject)
	}
	return o, nil
}

// Await returns the outcome of the command stored at seq in WALLETS_COMMANDS
// for walletID, waiting until ctx ends for it to be published. An event
// published before the call is found too: Await reads the wallet's events
// from the start of WALLETS_EVENTS (over one short-lived ordered consumer),
// then waits for new ones. To await many commands, use an Awaiter.
func (p *Producer) Await(ctx context.Context, walletID string, seq uint64) (Outcome, error) {
	want := strconv.FormatUint(seq, 10)
	o, err := p.scan(ctx, walletFilter(walletID), nil, func(h nats.Header) bool { return h.Get(messages.HeaderCommandSeq) == want })
	if err != nil {
		return Outcome{}, fmt.Errorf("producer: outcome of command %d: %w", seq, err)
	}
	return o, nil
}

// AwaitKey is Await for a producer that knows the key of its command but not
// its sequence (one that published through another client): it returns the
// first outcome stored for key on walletID. A key published again after the
// duplicate window is a new command with an outcome of its own, which
// AwaitKey does not return.
func (p *Producer) AwaitKey(ctx context.Context, walletID, key string) (Outcome, error) {
	o, err := p.scan(ctx, walletFilter(walletID), nil, func(h nats.Header) bool { return h.Get(messages.HeaderCommandKey) == key })
	if err != nil {
		return Outcome{}, fmt.Errorf("producer: outcome of key %q: %w", key, err)
	}
	return o, nil
}

// walletFilter is the subjects of walletID's outcome events.
func walletFilter(walletID string) []string {
	return []string{messages.BalanceCreatedSubject(walletID), messages.BalanceCreateRejectedSubject(walletID)}
}

// scan reads the outcome events on subjects, from since (nil: the start of
// the stream), until one matches.
func (p *Producer) scan(ctx context.Context, subjects []string, since *time.Time, match func(nats.Header) bool) (Outcome, error) {
	m, err := p.scanMsg(ctx, subjects, since, func(m jetstream.Msg) bool {
		_, ok := eventOf(m)
		return match(m.Headers()) && ok
	})
	if err != nil {
		return Outcome{}, err
	}
	e, _ := eventOf(m)
	return e.outcome()
}

// scanMsg reads WALLETS_EVENTS on subjects, from since (nil: the start of
// the stream), and returns the first message that matches.
func (p *Producer) scanMsg(ctx context.Context, subjects []string, since *time.Time, match func(jetstream.Msg) bool) (jetstream.Msg, error) {
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: subjects, DeliverPolicy: jetstream.DeliverAllPolicy}
	if since != nil {
		occ.DeliverPolicy, occ.OptStartTime = jetstream.DeliverByStartTimePolicy, since
	}
	oc, err := p.js.OrderedConsumer(ctx, messages.StreamEvents, occ)
	if err != nil {
		return nil, orCause(ctx, err)
	}
	iter, err := oc.Messages()
	if err != nil {
		return nil, orCause(ctx, err)
	}
	defer iter.Stop()
	for {
		m, err := iter.Next(jetstream.NextContext(ctx))
		if err != nil {
			return nil, orCause(ctx, err)
		}
		if match(m) {
			return m, nil
		}
	}
}

// orCause returns the cause of ctx's end when ctx has ended, so that callers
// can tell a deadline (errors.Is context.DeadlineExceeded) from a failure.
func orCause(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}
