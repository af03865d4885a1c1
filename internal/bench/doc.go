// Package bench is `wallets-worker bench`: it measures the worker in one
// process, on a temporary directory it removes, against an embedded NATS
// server, and compares it with the least a worker that reports outcomes must
// do. internal/cli dispatches to Command; nothing else imports it.
//
// A run has two phases on the same server, one after the other:
//
//   - worker: N commands are published to WALLETS_COMMANDS (a share of them
//     duplicates, which JetStream drops; conflicts, a second key for a balance
//     already commanded; replays, balances already in the ledger under the
//     same key, as the wallets service would have written them) and consumed
//     by worker.New + Run with the first-writer-wins claims on, through the
//     real handlers.CreateBalance, until every stored command has its outcome
//     event in WALLETS_EVENTS. With --workers N, N workers consume in the
//     process, each with its own NATS connection and claims binding, sharing
//     the durable consumer as N worker processes would.
//   - baseline: the same number of stored messages go through a second work
//     queue stream and durable pull consumer, consumed with the same total
//     concurrency (workers × concurrency) by a plain nats.go loop that publishes one event per message
//     (synchronously, PubAck checked, Nats-Msg-Id set) to a second events
//     stream and DoubleAcks it.
//
// Mode decides when publishing happens. In live mode (the default) the
// consumer runs first and commands are published while it consumes: the
// figures are throughput and latency under that load, the clock starting at
// the first publish. In drain mode every command is stored first and the clock
// starts when the consumer starts: the figure is drain throughput, and the
// latencies include the time a command waited in the stream.
//
// Latency is measured from the moment a command was due to be published (its
// slot in the schedule with --rate, so that a publisher falling behind does
// not hide queueing; the call to publish otherwise) to the moment JetStream
// stored its outcome event, both read from the clock of this one process.
// Outcomes are counted once per stored command, by the Wallets-Command-Seq
// header of the events an ordered consumer reads back from the events stream.
//
// With --batch, each worker's handler reaches the ledger through a
// ledgeradapter.Batcher (--batch-window, --batch-max, --ledger-concurrency),
// which coalesces concurrent reads into list-accounts requests and writes
// into bulks. Compare it with an unbatched run at equal ledger concurrency:
// unbatched, a worker has at most --concurrency ledger requests in flight
// (one per command); batched, at most --ledger-concurrency, while
// --concurrency, the commands in flight, can be far larger. Ledger calls
// are counted twice: at the handlers.Ledger seam, per command (what the
// handler asked for), and at the ledger, per request (what reached it, a
// batch once, with the most requests in flight at once).
//
// With --ledger-url, the workers write to a Formance ledger v2 at that URL
// (any: the real one, or the embedded one served elsewhere) through the
// ledger stack `wallets-worker run` builds with its defaults, in a ledger
// of the run's own (--ledger-name, default bench-<time>, created if
// missing). The defaults change to what a real ledger needs: 2,000
// commands, all new balances (no duplicates, conflicts or replays unless
// asked for). After the worker, three baselines write as many new balances
// straight to that ledger with plain net/http, each on addresses of its own
// and each as the worker writes them (address, metadata, Idempotency-Key):
// single writes at the most requests the worker had in flight
// (--single-in-flight), the wallets service's GET-then-write path at 32 in
// flight, and parallel bulks of 50 at 8 in flight, each request allowed
// --baseline-timeout (a minute: the baselines measure the ledger, not a
// client's patience; a bulk that times out partly lands and cannot be
// counted). The report gives
// creates/s of each, the worker's ratios to the best write, to
// GET-then-write and to single writes, the worker's HTTP requests per new
// balance and their answers, the requests that hit the client timeout, and
// how many new balances ended replayed (their write landed but its answer
// was lost). See URLReport.
//
// Memory figures are those of the whole process: the embedded NATS server
// runs in the same Go heap as the worker, and RSS covers both.
package bench
