package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/internal/natsconn"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/producer"
)

type publishFlags struct {
	// kind is the kind of a --from-file line that names none ("": every
	// line must).
	kind                         string
	wallet, name, expiresAt, key string
	priority                     int64
	wait                         bool
	timeout                      time.Duration
	nats                         natsconn.Config

	// --from-file (publish_file.go)
	fromFile, results, keyNamespace, progress string
	inFlight                                  int
}

// outcomeResult is the second JSON object, printed with --wait.
type outcomeResult struct {
	Type string `json:"type"` // balance-created or balance-create-rejected
	// DecidedBy is "publisher" on a KEY_REUSED that no worker published (a
	// duplicate publish of another command); Original is then the outcome
	// of that other command. Subject is the event's, empty then.
	DecidedBy string          `json:"decidedBy,omitempty"`
	Subject   string          `json:"subject,omitempty"`
	Event     json.RawMessage `json:"event"`
	Original  *outcomeResult  `json:"original,omitempty"`
}

// decidedByPublisher is outcomeResult.DecidedBy of a producer.Outcome that
// is ByPublisher.
const decidedByPublisher = "publisher"

func resultOf(o producer.Outcome) *outcomeResult {
	res := &outcomeResult{Type: "balance-created", Subject: o.Subject, Event: json.RawMessage(o.Data)}
	if o.Rejected != nil {
		res.Type = "balance-create-rejected"
	}
	if o.ByPublisher {
		res.DecidedBy = decidedByPublisher
		if o.Original != nil {
			res.Original = resultOf(*o.Original)
		}
	}
	return res
}

func publishCommand(ctx context.Context, args []string, env Env) int {
	f := &publishFlags{kind: messages.KindCreateBalance}
	fs := flag.NewFlagSet("publish create-balance", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.StringVar(&f.wallet, "wallet", "", "wallet ID (required)")
	fs.StringVar(&f.name, "name", "", "balance name (required)")
	fs.Int64Var(&f.priority, "priority", 0, "balance priority")
	fs.StringVar(&f.expiresAt, "expires-at", "", "expiry, RFC 3339 (empty: never)")
	fs.StringVar(&f.key, "key", "", "idempotency key, sent as Nats-Msg-Id (empty: a new random key)")
	fs.BoolVar(&f.wait, "wait", false, "wait for the command's outcome event and print it (with --from-file: for every outcome, and print their counts)")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "how long to wait for the publish and, with --wait, the outcome\n(with --from-file: for each publish, and with --wait for the outcomes still missing after the last publish)")
	fs.StringVar(&f.nats.URL, "nats-url", nats.DefaultURL, "NATS server URL(s), comma-separated")
	registerFileFlags(fs, f)
	natsconn.Register(fs, &f.nats)
	natsconn.RegisterInboxPrefix(fs, &f.nats)
	fs.Usage = usage(fs, publishSynopsis)
	if err := parse(fs, args, env.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return exitStatus(usageError("%v", err), env.Stderr)
	}
	if err := checkFileFlags(fs, f, commandFlags); err != nil {
		return exitStatus(err, env.Stderr)
	}
	if f.fromFile != "" {
		return publishFile(ctx, f, env)
	}

	cmd := messages.CreateBalance{WalletID: f.wallet, Name: f.name, Priority: f.priority}
	if f.expiresAt != "" {
		t, err := time.Parse(time.RFC3339Nano, f.expiresAt)
		if err != nil {
			return exitStatus(usageError("--expires-at %q is not RFC 3339", f.expiresAt), env.Stderr)
		}
		cmd.ExpiresAt = &t
	}
	key := f.key
	if key == "" {
		key = producer.NewKey()
	}
	// Refused before anything connects.
	if err := producer.Validate(cmd, key); err != nil {
		var ve *messages.ValidationError
		if errors.As(err, &ve) && ve.Field == messages.FieldKey {
			return exitStatus(usageError("--key: %v", err), env.Stderr)
		}
		return exitStatus(usageError("%v", err), env.Stderr)
	}
	if err := f.nats.Validate(); err != nil {
		return exitStatus(usageError("%v", err), env.Stderr)
	}

	tel, err := startTracing(ctx, env, nil)
	if err != nil {
		return exitStatus(err, env.Stderr)
	}
	defer stopTracing(tel, nil)
	ctx, span := startPublishSpan(ctx, tel, cmd, key)
	defer span.End()

	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	nc, err := natsconn.Connect(f.nats, nats.Name("wallets-worker publish"), nats.Timeout(min(f.timeout, 10*time.Second)))
	if err != nil {
		return exitStatus(err, env.Stderr)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return exitStatus(err, env.Stderr)
	}
	p := producer.New(js, producer.WithTracerProvider(tel.TracerProvider()))

	ack, err := p.Publish(ctx, cmd, key)
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(env.Stderr, "wallets-worker: publish timed out:", err)
			return ExitTimeout
		}
		return exitStatus(err, env.Stderr)
	}
	out := json.NewEncoder(env.Stdout)
	_ = out.Encode(ack)
	if !f.wait {
		return ExitOK
	}

	// A duplicate is compared with its original: another command under this
	// key is KEY_REUSED, whatever its wallet.
	o, err := p.AwaitAck(ctx, ack)
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(env.Stderr, "wallets-worker: no outcome for command %d within %s\n", ack.Seq, f.timeout)
			return ExitTimeout
		}
		return exitStatus(err, env.Stderr)
	}
	_ = out.Encode(resultOf(o))
	if o.Created != nil {
		return ExitOK
	}
	return ExitRejected
}

// publishFileCommand runs `publish --from-file FILE`: lines of any kind,
// each naming its own.
func publishFileCommand(ctx context.Context, args []string, env Env) int {
	f := &publishFlags{}
	fs := flag.NewFlagSet("publish --from-file", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.BoolVar(&f.wait, "wait", false, "wait for every outcome, and print their counts")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "how long to wait for each publish, and with --wait for the outcomes still missing after the last publish")
	fs.StringVar(&f.nats.URL, "nats-url", nats.DefaultURL, "NATS server URL(s), comma-separated")
	registerFileFlags(fs, f)
	natsconn.Register(fs, &f.nats)
	natsconn.RegisterInboxPrefix(fs, &f.nats)
	fs.Usage = usage(fs, publishFileSynopsis)
	if err := parse(fs, args, env.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return exitStatus(usageError("%v", err), env.Stderr)
	}
	if f.fromFile == "" {
		return exitStatus(usageError("--from-file is required (or name a kind: publish KIND)"), env.Stderr)
	}
	if err := checkFileFlags(fs, f, nil); err != nil {
		return exitStatus(err, env.Stderr)
	}
	return publishFile(ctx, f, env)
}
