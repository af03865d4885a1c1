package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/wallets-worker/wallets-worker/internal/natsconn"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/producer"
)

// publishKindSynopsis is the help of `publish <kind>` for the kinds beside
// create-balance (SPEC §7).
const publishKindSynopsis = `wallets-worker publish KIND --body JSON [--wallet ID] [--key KEY] [--wait] [flags]
       wallets-worker publish KIND --from-file FILE.jsonl [--wait] [flags]

KIND is one of create-wallet, update-wallet, credit-wallet, debit-wallet,
confirm-hold, void-hold. --body is the command's wire body (docs/wire.md):
inline JSON, @FILE, or - for standard input, checked as strictly as the
worker decodes it before anything connects. The subject's wallet is --wallet,
else the body's walletID; for create-wallet it is the wallet the key derives
(always printed, as is the hold a pending debit-wallet makes).

Prints the publish acknowledgement as one JSON object, and with --wait the
outcome event as a second. Exit 0: published (with --wait: applied);
3: rejected; 4: no acknowledgement or outcome within --timeout; 1: any other
error.

--from-file publishes every command of FILE as "publish --from-file" does
(see wallets-worker publish --help), its lines of kind KIND
unless they name another.`

// kindAck is the first JSON object `publish <kind>` prints.
type kindAck struct {
	Kind      string `json:"kind"`
	Key       string `json:"key"`
	WalletID  string `json:"walletID"`
	HoldID    string `json:"holdID,omitempty"` // of a pending debit
	Subject   string `json:"subject"`
	Stream    string `json:"stream"`
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate"`
}

func publishKindCommand(ctx context.Context, kind string, args []string, env Env) int {
	var wallet, body, key string
	f := &publishFlags{kind: kind}
	fs := flag.NewFlagSet("publish "+kind, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.StringVar(&body, "body", "", "the command's JSON body, @FILE, or - for standard input (required without --from-file)")
	fs.StringVar(&wallet, "wallet", "", "wallet ID of the subject (empty: the body's walletID; create-wallet: derived from the key)")
	fs.StringVar(&key, "key", "", "idempotency key, sent as Nats-Msg-Id (empty: a new random key)")
	fs.BoolVar(&f.wait, "wait", false, "wait for the command's outcome event and print it (with --from-file: for every outcome, and print their counts)")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "how long to wait for the publish and, with --wait, the outcome\n(with --from-file: for each publish, and with --wait for the outcomes still missing after the last publish)")
	fs.StringVar(&f.nats.URL, "nats-url", nats.DefaultURL, "NATS server URL(s), comma-separated")
	registerFileFlags(fs, f)
	natsconn.Register(fs, &f.nats)
	natsconn.RegisterInboxPrefix(fs, &f.nats)
	fs.Usage = usage(fs, strings.ReplaceAll(publishKindSynopsis, "KIND", kind))
	if err := parse(fs, args, env.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return exitStatus(usageError("%v", err), env.Stderr)
	}
	if err := checkFileFlags(fs, f, kindCommandFlags); err != nil {
		return exitStatus(err, env.Stderr)
	}
	if f.fromFile != "" {
		return publishFile(ctx, f, env)
	}
	wait, timeout, nc := f.wait, f.timeout, f.nats
	raw, err := readBody(body)
	if err != nil {
		return exitStatus(usageError("--body: %v", err), env.Stderr)
	}
	if key == "" {
		key = producer.NewKey()
	}
	if err := messages.ValidateKey(key); err != nil {
		return exitStatus(usageError("--key: %v", err), env.Stderr)
	}
	cmd, err := producer.NewCommand(kind, wallet, raw, key)
	if err != nil {
		return exitStatus(usageError("%v", err), env.Stderr)
	}
	if err := nc.Validate(); err != nil {
		return exitStatus(usageError("%v", err), env.Stderr)
	}

	tel, err := startTracing(ctx, env, nil)
	if err != nil {
		return exitStatus(err, env.Stderr)
	}
	defer stopTracing(tel, nil)
	ctx, span := tel.TracerProvider().Tracer(tracerName).Start(ctx, "publish "+kind)
	span.SetAttributes(semconv.MessagingMessageID(key), attribute.String("wallets.wallet_id", cmd.WalletID))
	defer span.End()

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := natsconn.Connect(nc, nats.Name("wallets-worker publish"), nats.Timeout(min(timeout, 10*time.Second)))
	if err != nil {
		return exitStatus(err, env.Stderr)
	}
	defer conn.Close()
	js, err := jetstream.New(conn)
	if err != nil {
		return exitStatus(err, env.Stderr)
	}
	p := producer.New(js, producer.WithTracerProvider(tel.TracerProvider()))
	ack, err := p.PublishCommand(ctx, cmd, key)
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(env.Stderr, "wallets-worker: publish timed out:", err)
			return ExitTimeout
		}
		return exitStatus(err, env.Stderr)
	}
	printed := kindAck{Kind: kind, Key: key, WalletID: cmd.WalletID, Subject: cmd.Subject(),
		Stream: ack.Stream, Seq: ack.Seq, Duplicate: ack.Duplicate}
	if kind == messages.KindDebitWallet {
		var d struct {
			Pending bool `json:"pending"`
		}
		if json.Unmarshal(raw, &d) == nil && d.Pending {
			printed.HoldID = messages.HoldIDOf(key)
		}
	}
	out := json.NewEncoder(env.Stdout)
	_ = out.Encode(printed)
	if !wait {
		return ExitOK
	}
	e, err := p.AwaitCommand(ctx, ack)
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(env.Stderr, "wallets-worker: no outcome for command %d within %s\n", ack.Seq, timeout)
			return ExitTimeout
		}
		return exitStatus(err, env.Stderr)
	}
	_ = out.Encode(e)
	if e.Rejected() {
		return ExitRejected
	}
	return ExitOK
}

// readBody reads --body: inline JSON, @FILE, or - for standard input.
func readBody(v string) ([]byte, error) {
	switch {
	case v == "":
		return nil, errors.New("is required")
	case v == "-":
		return io.ReadAll(io.LimitReader(os.Stdin, messages.MaxBodyBytes+1))
	case strings.HasPrefix(v, "@"):
		return os.ReadFile(v[1:])
	}
	return []byte(v), nil
}
