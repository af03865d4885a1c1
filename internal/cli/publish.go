package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/messages"
)

type publishFlags struct {
	wallet, name, expiresAt, key, natsURL, natsCreds, natsCA string
	priority                                                 int64
	wait                                                     bool
	timeout                                                  time.Duration
}

// publishResult is the first JSON object `publish` prints.
type publishResult struct {
	Key       string `json:"key"`
	Stream    string `json:"stream"`
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate"`
}

// outcomeResult is the second JSON object, printed with --wait.
type outcomeResult struct {
	Type    string          `json:"type"` // balance-created or balance-create-rejected
	Subject string          `json:"subject"`
	Event   json.RawMessage `json:"event"`
}

func publishCommand(ctx context.Context, args []string, env Env) int {
	f := &publishFlags{}
	fs := flag.NewFlagSet("publish create-balance", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.StringVar(&f.wallet, "wallet", "", "wallet ID (required)")
	fs.StringVar(&f.name, "name", "", "balance name (required)")
	fs.Int64Var(&f.priority, "priority", 0, "balance priority")
	fs.StringVar(&f.expiresAt, "expires-at", "", "expiry, RFC 3339 (empty: never)")
	fs.StringVar(&f.key, "key", "", "idempotency key, sent as Nats-Msg-Id (empty: a new random key)")
	fs.BoolVar(&f.wait, "wait", false, "wait for the command's outcome event and print it")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "how long to wait for the publish and, with --wait, the outcome")
	fs.StringVar(&f.natsURL, "nats-url", nats.DefaultURL, "NATS server URL(s), comma-separated")
	fs.StringVar(&f.natsCreds, "nats-creds", "", "NATS credentials file")
	fs.StringVar(&f.natsCA, "nats-ca", "", "PEM file of the NATS server's CA (enables TLS)")
	fs.Usage = usage(fs, "wallets-worker publish create-balance --wallet ID --name NAME [flags]")
	if err := parse(fs, args, env.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return exitStatus(usageError("%v", err), env.Stderr)
	}

	cmd := messages.CreateBalance{WalletID: f.wallet, Name: f.name, Priority: f.priority}
	if f.expiresAt != "" {
		t, err := time.Parse(time.RFC3339Nano, f.expiresAt)
		if err != nil {
			return exitStatus(usageError("--expires-at %q is not RFC 3339", f.expiresAt), env.Stderr)
		}
		cmd.ExpiresAt = &t
	}
	body, err := cmd.Encode()
	if err != nil {
		return exitStatus(usageError("%v", err), env.Stderr)
	}
	key := f.key
	if key == "" {
		key = randomKey()
	}
	if err := messages.ValidateKey(key); err != nil {
		return exitStatus(usageError("--key: %v", err), env.Stderr)
	}

	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	nc, err := connectClient(f.natsURL, f.natsCreds, f.natsCA, "wallets-worker publish", f.timeout)
	if err != nil {
		return exitStatus(err, env.Stderr)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return exitStatus(err, env.Stderr)
	}

	msg := &nats.Msg{Subject: messages.CreateBalanceSubject(cmd.WalletID), Data: body, Header: nats.Header{}}
	msg.Header.Set(messages.HeaderMsgID, key)
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithExpectStream(messages.StreamCommands))
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(env.Stderr, "wallets-worker: publish timed out:", err)
			return ExitTimeout
		}
		return exitStatus(fmt.Errorf("publish: %w", err), env.Stderr)
	}
	out := json.NewEncoder(env.Stdout)
	_ = out.Encode(publishResult{Key: key, Stream: ack.Stream, Seq: ack.Sequence, Duplicate: ack.Duplicate})
	if !f.wait {
		return ExitOK
	}

	res, err := awaitOutcome(ctx, js, cmd.WalletID, ack.Sequence)
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(env.Stderr, "wallets-worker: no outcome for command %d within %s\n", ack.Sequence, f.timeout)
			return ExitTimeout
		}
		return exitStatus(fmt.Errorf("await outcome: %w", err), env.Stderr)
	}
	_ = out.Encode(res)
	if res.Type == "balance-created" {
		return ExitOK
	}
	return ExitRejected
}

// awaitOutcome finds the outcome event of the command stored at seq, whether
// it was published before or after the call: it reads the wallet's events from
// the start of the events stream with an ordered consumer, and waits for new
// ones.
func awaitOutcome(ctx context.Context, js jetstream.JetStream, walletID string, seq uint64) (outcomeResult, error) {
	created := messages.BalanceCreatedSubject(walletID)
	rejected := messages.BalanceCreateRejectedSubject(walletID)
	oc, err := js.OrderedConsumer(ctx, messages.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{created, rejected},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return outcomeResult{}, err
	}
	iter, err := oc.Messages()
	if err != nil {
		return outcomeResult{}, err
	}
	defer iter.Stop()
	want := strconv.FormatUint(seq, 10)
	for {
		m, err := iter.Next(jetstream.NextContext(ctx))
		if err != nil {
			return outcomeResult{}, err
		}
		if m.Headers().Get(messages.HeaderCommandSeq) != want {
			continue
		}
		typ := "balance-created"
		if strings.HasPrefix(m.Subject(), strings.TrimSuffix(messages.SubjectBalanceRejectedAll, "*")) {
			typ = "balance-create-rejected"
		}
		return outcomeResult{Type: typ, Subject: m.Subject(), Event: json.RawMessage(m.Data())}, nil
	}
}

func randomKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
