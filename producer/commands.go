package producer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/messages"
)

// A command of any kind (SPEC §7) is a Command: its kind, the wallet of its
// subject and its body. The constructors below build the six kinds beside
// create-balance, each checked with the worker's own decoder before
// anything is sent.

// Command is a command of any kind, ready to publish.
type Command struct {
	Kind     string
	WalletID string // the subject's last token
	Body     []byte
}

func command(kind, wallet string, body any, decode func(subject string, body []byte) error) (Command, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return Command{}, err
	}
	c := Command{Kind: kind, WalletID: wallet, Body: b}
	if err := decode(c.Subject(), b); err != nil {
		return Command{}, err
	}
	return c, nil
}

// Subject is the command's subject, wallets.commands.<kind>.<wallet>.
func (c Command) Subject() string { return messages.SubjectCommandsPrefix + c.Kind + "." + c.WalletID }

// CreateWallet is a create-wallet command for key: its subject's wallet is
// the one the key derives (messages.WalletIDOf), which the caller may tell
// its users before the command is applied.
func CreateWallet(key string, cmd messages.CreateWallet) (Command, error) {
	cmd.WalletID = messages.WalletIDOf(key)
	return command(messages.KindCreateWallet, cmd.WalletID, cmd, func(s string, b []byte) error {
		_, err := messages.DecodeCreateWallet(s, b)
		return err
	})
}

// UpdateWallet is an update-wallet command.
func UpdateWallet(cmd messages.UpdateWallet) (Command, error) {
	return command(messages.KindUpdateWallet, cmd.WalletID, cmd, func(s string, b []byte) error {
		_, err := messages.DecodeUpdateWallet(s, b)
		return err
	})
}

// CreditWallet is a credit-wallet command.
func CreditWallet(cmd messages.CreditWallet) (Command, error) {
	return command(messages.KindCreditWallet, cmd.WalletID, cmd, func(s string, b []byte) error {
		_, err := messages.DecodeCreditWallet(s, b)
		return err
	})
}

// DebitWallet is a debit-wallet command; a pending one makes the hold
// messages.HoldIDOf(key).
func DebitWallet(cmd messages.DebitWallet) (Command, error) {
	return command(messages.KindDebitWallet, cmd.WalletID, cmd, func(s string, b []byte) error {
		_, err := messages.DecodeDebitWallet(s, b)
		return err
	})
}

// ConfirmHold is a confirm-hold command on a hold of walletID.
func ConfirmHold(cmd messages.ConfirmHold) (Command, error) {
	return command(messages.KindConfirmHold, cmd.WalletID, cmd, func(s string, b []byte) error {
		_, err := messages.DecodeConfirmHold(s, b)
		return err
	})
}

// VoidHold is a void-hold command on a hold of walletID.
func VoidHold(cmd messages.VoidHold) (Command, error) {
	return command(messages.KindVoidHold, cmd.WalletID, cmd, func(s string, b []byte) error {
		_, err := messages.DecodeVoidHold(s, b)
		return err
	})
}

// decoders are the worker's decoders of the kinds NewCommand builds.
var decoders = map[string]func(subject string, body []byte) error{
	messages.KindCreateWallet: func(s string, b []byte) error { _, err := messages.DecodeCreateWallet(s, b); return err },
	messages.KindUpdateWallet: func(s string, b []byte) error { _, err := messages.DecodeUpdateWallet(s, b); return err },
	messages.KindCreditWallet: func(s string, b []byte) error { _, err := messages.DecodeCreditWallet(s, b); return err },
	messages.KindDebitWallet:  func(s string, b []byte) error { _, err := messages.DecodeDebitWallet(s, b); return err },
	messages.KindConfirmHold:  func(s string, b []byte) error { _, err := messages.DecodeConfirmHold(s, b); return err },
	messages.KindVoidHold:     func(s string, b []byte) error { _, err := messages.DecodeVoidHold(s, b); return err },
}

// Kinds are the kinds NewCommand builds, in SPEC §7's order.
func Kinds() []string {
	return []string{messages.KindCreateWallet, messages.KindUpdateWallet, messages.KindCreditWallet,
		messages.KindDebitWallet, messages.KindConfirmHold, messages.KindVoidHold}
}

// NewCommand builds a command of kind from its wire body, checked with the
// worker's decoder. The wallet of a create-wallet is the one key derives,
// and wallet, when given, must be it; for the kinds whose body names its
// wallet (walletID), an empty wallet is taken from the body.
func NewCommand(kind, wallet string, body []byte, key string) (Command, error) {
	decode, ok := decoders[kind]
	if !ok {
		return Command{}, fmt.Errorf("producer: unknown command kind %q (known: %s)", kind, strings.Join(Kinds(), ", "))
	}
	if kind == messages.KindCreateWallet {
		if err := messages.ValidateKey(key); err != nil {
			return Command{}, err
		}
		derived := messages.WalletIDOf(key)
		if wallet != "" && wallet != derived {
			return Command{}, &messages.ValidationError{Field: messages.FieldWalletID,
				Reason: fmt.Sprintf("%q is not the wallet key %q derives (%s)", wallet, key, derived)}
		}
		wallet = derived
	}
	if wallet == "" {
		var named struct {
			WalletID string `json:"walletID"`
		}
		_ = json.Unmarshal(body, &named)
		wallet = named.WalletID
	}
	if wallet == "" {
		return Command{}, &messages.ValidationError{Field: messages.FieldWalletID, Reason: "is required"}
	}
	c := Command{Kind: kind, WalletID: wallet, Body: append([]byte(nil), body...)}
	if err := decode(c.Subject(), c.Body); err != nil {
		return Command{}, err
	}
	return c, nil
}

// CommandAck is JetStream's acknowledgement of a published Command.
type CommandAck struct {
	Key       string  `json:"key"`
	Stream    string  `json:"stream"`
	Seq       uint64  `json:"seq"`
	Duplicate bool    `json:"duplicate"`
	Command   Command `json:"-"`
}

// PublishCommand publishes c with key as its Nats-Msg-Id.
func (p *Producer) PublishCommand(ctx context.Context, c Command, key string) (ack CommandAck, err error) {
	if err := messages.ValidateKey(key); err != nil {
		return CommandAck{}, err
	}
	msg := &nats.Msg{Subject: c.Subject(), Data: c.Body, Header: nats.Header{}}
	msg.Header.Set(messages.HeaderMsgID, key)
	ctx, span := p.startSend(ctx, msg, key)
	defer func() { endSend(span, Ack{Key: key, Seq: ack.Seq, Duplicate: ack.Duplicate}, err) }()
	pa, err := p.js.PublishMsg(ctx, msg, p.pubOpts...)
	if err != nil {
		return CommandAck{}, fmt.Errorf("producer: publish %s command %q for wallet %s: %w", c.Kind, key, c.WalletID, err)
	}
	return CommandAck{Key: key, Stream: pa.Stream, Seq: pa.Sequence, Duplicate: pa.Duplicate, Command: c}, nil
}

// Event is the outcome event of a command of any kind.
type Event struct {
	// Name is the event's name: wallet-credited, debit-wallet-rejected, ...
	Name string `json:"type"`
	// Subject is the event's subject, empty on an outcome ByPublisher.
	Subject string `json:"subject,omitempty"`
	// Code is the rejection's code, empty for a success.
	Code messages.Code `json:"-"`
	// Data is the event's body.
	Data json.RawMessage `json:"event"`
	// DecidedBy is "publisher" on a KEY_REUSED that no worker published:
	// the key was stored, within the duplicate window, with another command.
	DecidedBy string `json:"decidedBy,omitempty"`
}

// Rejected tells a rejection.
func (e Event) Rejected() bool { return e.Code != "" }

// AwaitCommand returns the outcome event of a published command, waiting
// until ctx ends. A duplicate publish (the key stored before, within the
// duplicate window) is answered with its original's outcome when the
// original is the same command, and with KEY_REUSED, decided here, when it
// is another.
func (p *Producer) AwaitCommand(ctx context.Context, ack CommandAck) (Event, error) {
	reused, compare, err := (&originals{js: p.js}).judge(ctx, ack)
	if err != nil || reused != nil {
		return orZero(reused), err
	}
	e, err := p.commandEvent(ctx, ack)
	if err != nil || !compare {
		return e, err
	}
	return byOriginal(ack, e), nil
}

// AwaitCommands returns the outcome events of published commands of any
// kind, in the order of acks, once all have arrived, judging duplicates as
// AwaitCommand does. When ctx ends first, or the Awaiter stops, it returns
// the events that arrived (a zero Event, with an empty Name, for the others)
// and an error that wraps the cause.
func (a *Awaiter) AwaitCommands(ctx context.Context, acks []CommandAck) ([]Event, error) {
	out := make([]Event, len(acks))
	compare := make([]bool, len(acks))
	var seqs []uint64
	var idx []int
	o := &originals{js: a.js}
	for i, ack := range acks {
		reused, cmp, err := o.judge(ctx, ack)
		if err != nil {
			return out, err
		}
		if reused != nil {
			out[i] = *reused
			continue
		}
		compare[i] = cmp
		seqs, idx = append(seqs, ack.Seq), append(idx, i)
	}
	evs, err := a.awaitEvents(ctx, seqs)
	for j, e := range evs {
		if e.subject == "" {
			continue
		}
		i := idx[j]
		out[i] = newEvent(e.subject, e.data)
		if compare[i] {
			out[i] = byOriginal(acks[i], out[i])
		}
	}
	return out, err
}

// originalReadTimeout bounds the read of a duplicate's original.
const originalReadTimeout = 2 * time.Second

// originals reads the originals of duplicate publishes from
// WALLETS_COMMANDS for one await: the stream is looked up once, and a read
// that fails other than by the original being gone (applied, so removed
// from the work queue) makes the later duplicates go straight to their
// original's event. A user not granted the read (an older auth.conf) gets no
// answer at all, so each such read would otherwise cost originalReadTimeout.
type originals struct {
	js         jetstream.JetStream
	s          jetstream.Stream
	unreadable bool
}

// judge judges a duplicate publish by its original while it is still
// stored: reused is the KEY_REUSED to answer when the original was another
// command. compare is set when the original is gone or cannot be read, for
// its event to judge (byOriginal).
func (o *originals) judge(ctx context.Context, ack CommandAck) (reused *Event, compare bool, err error) {
	if !ack.Duplicate {
		return nil, false, nil
	}
	if o.unreadable {
		return nil, true, nil
	}
	gctx, cancel := context.WithTimeout(ctx, originalReadTimeout)
	defer cancel()
	if o.s == nil {
		o.s, err = o.js.Stream(gctx, messages.StreamCommands)
	}
	var m *jetstream.RawStreamMsg
	if err == nil {
		m, err = o.s.GetMsg(gctx, ack.Seq)
	}
	switch {
	case err == nil:
		if m.Subject != ack.Command.Subject() || !sameJSON(m.Data, ack.Command.Body) {
			e := keyReused(ack, m.Subject)
			return &e, false, nil
		}
		return nil, false, nil
	case ctx.Err() != nil:
		return nil, false, fmt.Errorf("producer: the original of command %d: %w", ack.Seq, context.Cause(ctx))
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		o.unreadable = true
	}
	return nil, true, nil
}

// byOriginal is the outcome of a duplicate publish given its original's
// event e: e itself when the original was the same command, else KEY_REUSED.
func byOriginal(ack CommandAck, e Event) Event {
	if e.Subject != messages.EventSubject(e.Name, ack.Command.WalletID) || !sameKind(e.Name, ack.Command.Kind) || !agrees(ack.Command.Body, e.Data) {
		return keyReused(ack, e.Subject)
	}
	return e
}

func orZero(e *Event) Event {
	if e == nil {
		return Event{}
	}
	return *e
}

// keyReused is the KEY_REUSED of a duplicate publish whose original, told by
// what, was another command.
func keyReused(ack CommandAck, what string) Event {
	body, _ := json.Marshal(messages.CommandRejected{Key: ack.Key, WalletID: ack.Command.WalletID, Code: messages.CodeKeyReused,
		Message: fmt.Sprintf("the key was used within the duplicate window for another command (sequence %d: %s); "+
			"JetStream dropped this publish and stored nothing for it", ack.Seq, what)})
	return Event{Name: ack.Command.Kind + "-rejected", Code: messages.CodeKeyReused, Data: body, DecidedBy: "publisher"}
}

// successes are the success events of the kinds NewCommand builds.
var successes = map[string]string{
	messages.KindCreateWallet: messages.EventWalletCreated,
	messages.KindUpdateWallet: messages.EventWalletUpdated,
	messages.KindCreditWallet: messages.EventWalletCredited,
	messages.KindDebitWallet:  messages.EventWalletDebited,
	messages.KindConfirmHold:  messages.EventHoldConfirmed,
	messages.KindVoidHold:     messages.EventHoldVoided,
}

// sameKind tells whether event name is an outcome of kind.
func sameKind(name, kind string) bool {
	return name == kind+"-rejected" || name == successes[kind]
}

// identity are the body fields an outcome event repeats as they were sent;
// a duplicate whose original's event tells another value of one of them was
// another command.
var identity = []string{"walletID", "amount", "holdID", "final", "pending"}

// agrees tells whether the fields of identity that both the body and the
// event carry are equal.
func agrees(body, event []byte) bool {
	var b, e map[string]json.RawMessage
	if json.Unmarshal(body, &b) != nil || json.Unmarshal(event, &e) != nil {
		return true
	}
	for _, f := range identity {
		bv, inBody := b[f]
		ev, inEvent := e[f]
		if inBody && inEvent && !sameJSON(bv, ev) {
			return false
		}
	}
	return true
}

// commandEvent waits for the event of the command stored at ack.Seq.
func (p *Producer) commandEvent(ctx context.Context, ack CommandAck) (Event, error) {
	seq := ack.Seq
	want := strconv.FormatUint(seq, 10)
	// Two filters, the kind's success and rejection on the wallet, or none:
	// a consumer with one filter is created on an API subject that carries
	// it, which auth.conf does not grant producers.
	subjects := []string{messages.EventSubject(successes[ack.Command.Kind], ack.Command.WalletID),
		messages.EventSubject(ack.Command.Kind+"-rejected", ack.Command.WalletID)}
	var since *time.Time
	if ack.Duplicate {
		// The original may be of any kind, on any wallet's subject.
		s, err := lookbackStart(ctx, p.js, -1)
		if err != nil {
			return Event{}, fmt.Errorf("producer: outcome of command %d: %w", seq, orCause(ctx, err))
		}
		subjects, since = nil, &s
	}
	m, err := p.scanMsg(ctx, subjects, since, func(m jetstream.Msg) bool { return m.Headers().Get(messages.HeaderCommandSeq) == want })
	if err != nil {
		return Event{}, fmt.Errorf("producer: outcome of command %d: %w", seq, err)
	}
	return newEvent(m.Subject(), m.Data()), nil
}

// newEvent is the Event stored on subject with data.
func newEvent(subject string, data []byte) Event {
	e := Event{Subject: subject, Data: append(json.RawMessage(nil), data...)}
	if parts := strings.Split(subject, "."); len(parts) > 2 {
		e.Name = parts[2]
	}
	if strings.HasSuffix(e.Name, "-rejected") {
		var r struct {
			Code messages.Code `json:"code"`
		}
		_ = json.Unmarshal(data, &r)
		e.Code = r.Code
	}
	return e
}

// Replayed tells a success that an earlier delivery or publish of the same
// command had applied (the event's "replayed").
func (e Event) Replayed() bool {
	var r struct {
		Replayed bool `json:"replayed"`
	}
	return !e.Rejected() && json.Unmarshal(e.Data, &r) == nil && r.Replayed
}

// sameJSON tells two JSON bodies of the same value apart from two of
// different ones, whatever the order of their fields.
func sameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}
