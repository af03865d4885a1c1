// Package producer publishes commands to JetStream and awaits their outcome
// events (SPEC §3): create-balance through Producer.Publish, the other kinds
// as a Command (CreateWallet, CreditWallet, ...) through Producer.PublishCommand.
// Producer services import it, and so do the `wallets-worker publish`
// commands; the worker does not.
//
// It promises that:
//   - Publish refuses, before anything reaches the wire, every command and
//     key the worker would refuse: it encodes the command and decodes the
//     bytes it would send with the worker's own decoder (messages), and checks
//     the key with messages.ValidateKey. A refusal is a
//     *messages.ValidationError;
//   - a published command carries its key in Nats-Msg-Id and is stored in
//     WALLETS_COMMANDS or not at all (the publish expects that stream). A
//     publish that failed or timed out may be retried with the same key: within
//     the stream's duplicate window JetStream stores it once and reports the
//     retry as a Duplicate of the original sequence;
//   - Await finds the outcome of a stored command whether its event was
//     published before or after the call, so a Duplicate publish can be
//     awaited like a fresh one;
//   - AwaitAck (and Awaiter.AwaitAcks) return the outcome of the command
//     that was published: for a Duplicate, the original's outcome when the
//     original is the same command, and a KEY_REUSED rejection decided here
//     (Outcome.ByPublisher) when the key was first used for another command,
//     another wallet's included — JetStream dropped the publish, no worker
//     will ever see it, and the original's outcome says nothing about it;
//   - an Awaiter waits for any number of outcomes at once over one ordered
//     consumer (one subscription) on WALLETS_EVENTS, dispatching events by
//     their Wallets-Command-Seq header.
//
// Keys: KeyFrom derives a stable key from an identifier the caller already
// has (an order ID, a request ID), so that a retry after a crash reuses it;
// NewKey draws a random one for commands that have none.
//
// Outcomes are the shared types of package messages; this package defines no
// wire format of its own.
package producer
