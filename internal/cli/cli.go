// Package cli is the wallets-worker command line: `run`, `publish
// create-balance` and their flags (SPEC §2). cmd/wallets-worker calls Main;
// tests call it too, in process.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/wallets-worker/wallets-worker/internal/bench"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/producer"
)

// Exit statuses (SPEC §2).
const (
	ExitOK       = 0
	ExitError    = 1
	ExitUsage    = 2
	ExitRejected = 3
	ExitTimeout  = 4
)

// Env is what Main needs from its surroundings.
type Env struct {
	Stdout, Stderr io.Writer
	// Getenv defaults to os.Getenv.
	Getenv func(string) string
	// Signals, when set, delivers shutdown requests to `run` (the first
	// drains, the second aborts); main wires SIGINT and SIGTERM to it.
	Signals <-chan os.Signal
	// Ready, when set, is called by `run` once it consumes, with the
	// addresses it serves.
	Ready func(Addrs)
}

// Addrs are where a running worker's services listen.
type Addrs struct {
	NATSURL, LedgerURL, HTTPAddr string
}

// Main runs the command line args (without the program name) and returns the
// exit status.
func Main(ctx context.Context, args []string, env Env) int {
	if env.Stdout == nil {
		env.Stdout = io.Discard
	}
	if env.Stderr == nil {
		env.Stderr = io.Discard
	}
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	if len(args) == 0 {
		topUsage(env.Stderr)
		return ExitUsage
	}
	var err error
	switch args[0] {
	case "run":
		err = runCommand(ctx, args[1:], env)
	case "publish":
		if len(args) >= 2 && strings.HasPrefix(args[1], "-") {
			// publish --from-file FILE: every line names its kind.
			code := publishFileCommand(ctx, args[1:], env)
			if code == ExitUsage {
				code = ExitError
			}
			return code
		}
		if len(args) < 2 || (args[1] != messages.KindCreateBalance && !slices.Contains(producer.Kinds(), args[1])) {
			fmt.Fprintf(env.Stderr, "usage: wallets-worker publish (%s) [flags]\n       wallets-worker publish --from-file FILE.jsonl [flags]\n", strings.Join(append([]string{messages.KindCreateBalance}, producer.Kinds()...), " | "))
			return ExitUsage
		}
		var code int
		if args[1] == messages.KindCreateBalance {
			code = publishCommand(ctx, args[2:], env)
		} else {
			code = publishKindCommand(ctx, args[1], args[2:], env)
		}
		if code == ExitUsage {
			code = ExitError // SPEC §2: publish exits 1 for every other error
		}
		return code
	case "dlq":
		err = dlqCommand(ctx, args[1:], env)
	case "provision":
		err = provisionCommand(ctx, args[1:], env)
	case "bench":
		// The workers of bench trace with the global provider, which
		// startTracing sets when the OTEL_* variables ask for export.
		tel, terr := startTracing(ctx, env, nil)
		if terr != nil {
			return exitStatus(terr, env.Stderr)
		}
		err = bench.Command(ctx, args[1:], env.Stdout, env.Stderr)
		stopTracing(tel, nil)
		if errors.Is(err, bench.ErrUsage) {
			err = usageError("%v", err)
		}
	case "help", "-h", "--help":
		topUsage(env.Stdout)
		return ExitOK
	default:
		fmt.Fprintf(env.Stderr, "wallets-worker: unknown command %q\n", args[0])
		topUsage(env.Stderr)
		return ExitUsage
	}
	return exitStatus(err, env.Stderr)
}

func exitStatus(err error, stderr io.Writer) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "wallets-worker:", err)
		return ExitUsage
	default:
		fmt.Fprintln(stderr, "wallets-worker:", err)
		return ExitError
	}
}

var errUsage = errors.New("usage")

func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

func topUsage(w io.Writer) {
	fmt.Fprint(w, `wallets-worker applies the wallets service's writes, as commands from NATS JetStream, to a Formance ledger.

Usage:
  wallets-worker run [flags]                        consume commands (embedded NATS and ledger by default)
  wallets-worker publish create-balance [flags]     publish one command, optionally wait for its outcome
  wallets-worker publish KIND --body JSON [flags]   publish a create-wallet, update-wallet, credit-wallet,
                                                    debit-wallet, confirm-hold or void-hold command
  wallets-worker dlq list [flags]                   list dead letters: what, why, when, how many deliveries
  wallets-worker dlq redrive (--seq N | --all)      republish dead-lettered commands with their original keys
  wallets-worker provision [run's flags]            create or update the streams, the consumer and the claims bucket, then exit
  wallets-worker bench [flags]                      measure the worker against raw JetStream, all in process

Run "wallets-worker <command> --help" for the flags of a command.
`)
}
