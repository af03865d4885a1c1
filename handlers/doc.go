// Package handlers decides what a CreateBalance command does to the ledger.
//
// It is the only place that knows the wallets service's ledger layout (SPEC §4):
// the account address of a balance, its metadata keys and the per-key replay
// marker. CreateBalance.Handle takes a decoded command and its idempotency key
// and returns either an Outcome (created, replayed or rejected) or an error the
// caller may retry; it never sees a NATS message, and it reaches the ledger only
// through the small Ledger interface declared here, which ledgeradapter.Client
// satisfies.
//
// Handle is safe to call any number of times for one command, concurrently
// too: every attempt sends the same bytes under the same ledger
// Idempotency-Key, so the ledger applies the write at most once, and an attempt
// that finds the write already made replays it.
//
// The worker package imports it; cmd wires it to a ledger client.
package handlers
