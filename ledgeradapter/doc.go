// Package ledgeradapter is the worker's HTTP client for a Formance Ledger v2.
// The facts about that server it relies on are the ledger contract in
// docs/ledger.md; "CONTRACT §N" in this module's comments names its sections.
//
// # Contract
//
// Client offers the few calls the worker needs, each taking a context first:
// EnsureLedger, GetAccount, AddAccountMetadata, their batched forms
// ListAccounts (many accounts by address in one request) and Bulk (many
// metadata writes in one request, each element with its own idempotency
// key and its own result), ListLogs/AllLogs and Healthcheck. It promises
// that:
//
//   - an address or ledger name is validated before any request is sent
//     (ValidateAddress, ValidateLedgerName), so a malformed address can never
//     reach the ledger, where it would be read as a pattern (CONTRACT §1);
//   - a never-touched account is (Account{}, false, nil), not an error;
//   - a replayed write (same Idempotency-Key, same input) succeeds with
//     WriteResult.IdempotencyHit set;
//   - every failure is an *Error that keeps the ledger's errorCode,
//     errorMessage and details, and says whether trying again may help
//     (Error.Retryable, IsRetryable): network errors, timeouts, 401, 408, 429
//     and every 5xx are retryable, so is the caller's own cancellation (the
//     command will come back) and an answer that is not a ledger's (a
//     gateway's bare 404, an HTML 200); every other 4xx, which the ledger
//     names with an error code (400 VALIDATION, 404 LEDGER_NOT_FOUND, ...),
//     is permanent;
//   - no error string carries a client secret or a bearer token.
//
// The client never retries by itself: the worker owns retries and their
// backoff, and every attempt of a write sends the same Idempotency-Key. The
// one exception is a parallel bulk whose answer says that some element
// failed but not which (Client.Bulk): its elements of unknown fate are
// asked again, in order, so that each gets its own outcome.
//
// Batcher has GetAccount and AddAccountMetadata too, and coalesces the
// calls that run at the same time into ListAccounts and Bulk requests, with
// a small window; how many requests it keeps in flight and how many calls
// one carries adapt to the ledger's latency and failures (Limiter). Each
// call keeps its own result and error. The only thing it loses
// is IdempotencyHit on a write that shared its request: the ledger's bulk
// answer does not carry it.
//
// # Who imports it
//
// The handlers package reaches the ledger only through small interfaces it
// declares (GetAccount, AddAccountMetadata), which *Client and *Batcher
// satisfy; cmd builds the Client from flags, wraps it in a Batcher when
// batching is on, and calls EnsureLedger at start. Tests and local runs
// point it at ledgeradapter/embeddedledger.
package ledgeradapter
