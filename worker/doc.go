// Package worker moves commands of any kind from JetStream to their kind's
// decision (handlers.Kind) and settles each delivery in one place. It names
// no kind: a kind is its wire names in package messages, its decision in
// package handlers, and one line where the worker's kinds are registered
// (handlers.NewKinds, in `run`).
//
// It provisions the streams and the durable pull consumer of SPEC §3
// (Provision), pulls commands through a Watermill router with a small
// message.Subscriber of its own on nats.go's jetstream package, and for every
// delivery:
//
//   - finds the command's kind from its subject (wallets.commands.<kind>.…;
//     a kind it does not have is INVALID_COMMAND, on a command-rejected
//     event and the dead letter wallets.dlq.<kind>.<wallet>);
//   - decodes the key (Nats-Msg-Id) and the body strictly, through the
//     kind; an invalid command is dead-lettered, gets its kind's rejected
//     event and is terminated;
//   - on a redelivery, reads the newest outcome event of the command's
//     wallet: if it is the command's own (stored by an earlier delivery
//     whose ack was lost), acks the command without deciding it again;
//   - calls the kind's decision with a deadline counted from delivery, sending
//     InProgress while it runs so that no other worker takes the command;
//   - publishes the outcome event (synchronously, PubAck checked, deduplicated
//     by Nats-Msg-Id key:sequence) and only then DoubleAcks the command;
//   - on a transient failure, NakWithDelay with an exponential, jittered delay
//     computed from the delivery count, until the retry budget (MaxDeliver) is
//     spent; the last failure becomes RETRIES_EXHAUSTED.
//
// Nothing acknowledged is lost: a command is acked only after its outcome is
// stored. Nothing is applied twice: the handler is idempotent, and a replayed
// outcome carries the same event ID. cmd imports this package; handlers never
// see a jetstream.Msg.
package worker
