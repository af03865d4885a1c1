package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/internal/natsconn"
	"github.com/wallets-worker/wallets-worker/worker"
)

// provisionCommand runs `wallets-worker provision`: the provisioning that
// `run` does before it consumes (streams, consumer, claims bucket, created or
// updated), and nothing else. It takes every flag of `run`, so that one set
// of WALLETS_WORKER_* settings provisions exactly what the workers expect, and
// lets workers run with --no-provision under a NATS user that may not create
// or change streams (docs/nats-authorization.md).
func provisionCommand(ctx context.Context, args []string, env Env) error {
	fs, f := runFlagSet(env)
	timeout := 30 * time.Second
	fs.DurationVar(&timeout, "timeout", timeout, "overall timeout")
	fs.Usage = usage(fs, "wallets-worker provision --nats-url URL [run's flags]")
	if err := parse(fs, args, env.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError("%v", err)
	}
	var errs []error
	if f.nats.URL == "" {
		errs = append(errs, usageError("provision needs --nats-url"))
	}
	if err := f.nats.Validate(); err != nil {
		errs = append(errs, usageError("%v", err))
	}
	if err := f.w.Validate(); err != nil {
		errs = append(errs, usageError("%v", err))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nc, err := natsconn.Connect(f.nats, nats.Name("wallets-worker provision"), nats.Timeout(min(timeout, 10*time.Second)))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if err := worker.Provision(ctx, js, f.w); err != nil {
		return err
	}
	fmt.Fprintln(env.Stderr, "wallets-worker: provisioned the streams, the consumer and the claims bucket")
	return nil
}
