// Package embeddedledger is a small, durable, Formance-Ledger-v2-compatible
// HTTP server for local runs and tests. Production points the worker at a real
// Formance Ledger; this package only exists so that `wallets-worker run` works
// without one and so that tests exercise real HTTP against real semantics.
//
// # Contract
//
// It serves, under the same paths, bodies, status codes and error codes as the
// real ledger (the ledger contract in docs/ledger.md; "CONTRACT §N" in
// comments names its sections), exactly
// the endpoints the worker uses:
//
//	GET    /_healthcheck
//	GET    /v2/{ledger}                               404 NOT_FOUND when missing
//	POST   /v2/{ledger}                               400 LEDGER_ALREADY_EXISTS when present
//	GET    /v2/{ledger}/accounts                      filtered by the body, by address, offset cursors
//	GET    /v2/{ledger}/accounts/{address}            404 NOT_FOUND when never touched
//	POST   /v2/{ledger}/accounts/{address}/metadata   additive shallow merge, creates the account
//	DELETE /v2/{ledger}/accounts/{address}/metadata/{key}
//	GET    /v2/{ledger}/logs                          newest first, cursor-paginated
//	POST   /v2/{ledger}/transactions                  a script or postings, atomic
//	GET    /v2/{ledger}/transactions                  filtered by the query, newest first
//	GET    /v2/{ledger}/transactions/{id}             404 NOT_FOUND when missing
//	POST   /v2/{ledger}/_bulk                         JSON bulks of metadata writes and transactions, in order
//
// Ledger-scoped routes answer 404 LEDGER_NOT_FOUND for an unknown ledger.
// Writes honour the Idempotency-Key header like the real ledger: one key space
// per ledger shared by every write, a hash of the command input stored with
// the log, a replay answered 204 with "Idempotency-Hit: true", a reuse with
// another input answered 400 VALIDATION, concurrent users of one key getting
// exactly one log. A bulk element is the same write as its single endpoint,
// in the same key space; it answers in order, 200 or (one element failed)
// 400 with one result per element, never says whether an element was an
// idempotency hit (neither does the real one), and keeps its elements in one
// SQLite transaction with a savepoint each, committed before the answer.
// The account list understands $and, $or, $not, $match and $in on address,
// $match on metadata[key] and $exists on metadata; the transaction list
// $match on account, source, destination, reference, id and metadata[key],
// and $exists on metadata; other filters answer 400.
//
// Transactions move amounts of any size between accounts, with volumes per
// account and asset; only @world may go below zero unless a script allows
// an overdraft or plain postings are forced. Scripts run on Formance's
// Numscript interpreter (github.com/formancehq/numscript) against the write
// transaction they are applied in, so concurrent debits never overdraw.
// Where that interpreter answers otherwise than the machine inside the real
// ledger, FIDELITY.md says which answer this ledger gives.
//
// Writes that race to create one account answer like the real ledger's
// PostgreSQL transactions do (CONTRACT §3): when a write arrives while
// another write that creates the same missing account has not committed
// yet, it answers 500 INTERNAL with the real body once that write commits,
// and its retry succeeds (an Idempotency-Hit when it carries the winner's
// key). The elements of a bulk sent with parallel=true are such concurrent
// writes among themselves; those of a bulk run in order are not. A race
// needs the writes to overlap, and a write here takes a fraction of a
// millisecond against the real ledger's tens, so the 500 is rarer here.
//
// # Fidelity
//
// testdata/ledger-v2-probes.jsonl holds what a real Formance Ledger v2.4.12
// answered to 46 probes, testdata/ledger-v2-tx-probes.jsonl to 100 more on
// transactions, testdata/ledger-v2-md-dryrun-probes.jsonl to 15 dry runs of
// account metadata; TestFidelity, TestFidelityTransactions and
// TestFidelityMetadataDryRuns replay them and compare status,
// error code, Idempotency-Hit and body shape. FIDELITY.md lists the result
// for each probe and what is not compared.
//
// # Storage and durability
//
// State lives in one SQLite file, dir/ledger.db (pure Go driver
// modernc.org/sqlite), in WAL mode. Writes go through one committer
// goroutine and a single write connection (group.go): the write requests
// that arrive while a transaction runs are committed together in the next
// one, each still its own write with its own Idempotency-Key check, log and
// answer, and none answered before its transaction has committed. A lone
// write runs at once, alone. Reads use a separate pool and see committed
// snapshots. The default synchronous=NORMAL makes a committed write (one
// answered 204) survive a crash or SIGKILL of the process, not a power loss
// or kernel crash; WithSyncFull adds an fsync per commit for that. One
// process at a time should own a directory: the committer keeps the newest
// log of each ledger in memory.
//
// A client in the same process, like `wallets-worker run` with its embedded
// ledger, can reach the handler without a socket through Transport.
//
// # Not implemented
//
// Reverting transactions, transaction metadata updates, the volumes
// endpoint, templates and schemas (any schemaVersion answers 404 NOT_FOUND),
// effective volumes ordered by timestamp (they are the post-commit ones
// here), ledger listing and ledger metadata updates, counting accounts
// (HEAD), streamed bulks, logs import/export, pit (parsed, then ignored),
// sort orders other than id:desc for logs and transactions and address for
// accounts, filters on balances and dates, authentication and the
// Formance-Bigint-As-String header. Paths that are no route here answer the
// real router's plain-text 404, real routes of the ledger among them.
package embeddedledger
