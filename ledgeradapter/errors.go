package ledgeradapter

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Error codes of the ledger (V2ErrorsEnum) that the worker tells apart.
const (
	CodeValidation          = "VALIDATION"
	CodeNotFound            = "NOT_FOUND"
	CodeLedgerNotFound      = "LEDGER_NOT_FOUND"
	CodeLedgerAlreadyExists = "LEDGER_ALREADY_EXISTS"
	CodeInternal            = "INTERNAL"

	CodeInsufficientFund   = "INSUFFICIENT_FUND"
	CodeCompilationFailed  = "COMPILATION_FAILED"
	CodeInterpreterParse   = "INTERPRETER_PARSE"
	CodeInterpreterRuntime = "INTERPRETER_RUNTIME"
	CodeMetadataOverride   = "METADATA_OVERRIDE"
	CodeNoPostings         = "NO_POSTINGS"
	CodeConflict           = "CONFLICT"
)

// idempotencyHashMessage starts the ledger's answer to an Idempotency-Key
// stored with another input (ErrInvalidIdempotencyInput, CONTRACT §3).
const idempotencyHashMessage = "invalid idempotency hash"

// Sentinels. Those about the ledger's answer match an *Error through its Is
// method, on the errorCode (or status) the ledger sent; the others are wrapped
// in *Error.Err.
var (
	// ErrInvalidAddress: the address fails ValidateAddress; nothing was sent.
	ErrInvalidAddress = errors.New("ledgeradapter: invalid account address")
	// ErrInvalidLedgerName: the name fails ValidateLedgerName; nothing was sent.
	ErrInvalidLedgerName = errors.New("ledgeradapter: invalid ledger name")
	// ErrInvalidIdempotencyKey: longer than the ledger stores (255
	// characters, which it would answer with a 500 on every attempt) or not a
	// valid header value; nothing was sent.
	ErrInvalidIdempotencyKey = errors.New("ledgeradapter: invalid idempotency key")

	// ErrValidation matches a 400 VALIDATION answer.
	ErrValidation = errors.New("ledgeradapter: ledger answered VALIDATION")
	// ErrIdempotencyConflict matches the VALIDATION answer to an
	// Idempotency-Key stored with another input (another body, address or
	// operation). The ledger has no code of its own for it, so this looks at
	// the message, "invalid idempotency hash when using idempotency key ..."
	// (CONTRACT §3).
	ErrIdempotencyConflict = errors.New("ledgeradapter: idempotency key already used with another input")
	// ErrNotFound matches a 404 NOT_FOUND answer.
	ErrNotFound = errors.New("ledgeradapter: ledger answered NOT_FOUND")
	// ErrLedgerNotFound matches a 404 LEDGER_NOT_FOUND answer.
	ErrLedgerNotFound = errors.New("ledgeradapter: ledger answered LEDGER_NOT_FOUND")
	// ErrLedgerAlreadyExists matches a 400 LEDGER_ALREADY_EXISTS answer.
	ErrLedgerAlreadyExists = errors.New("ledgeradapter: ledger answered LEDGER_ALREADY_EXISTS")
	// ErrInsufficientFunds matches 400 INSUFFICIENT_FUND: a source lacks
	// the funds (also for an asset it never held).
	ErrInsufficientFunds = errors.New("ledgeradapter: ledger answered INSUFFICIENT_FUND")
	// ErrCompilationFailed matches 400 COMPILATION_FAILED and
	// INTERPRETER_PARSE: the script, or its vars, do not compile.
	ErrCompilationFailed = errors.New("ledgeradapter: ledger could not compile the script")
	// ErrInterpreterRuntime matches 400 INTERPRETER_RUNTIME: the script
	// failed while running, for a reason other than missing funds.
	ErrInterpreterRuntime = errors.New("ledgeradapter: the script failed at run time")
	// ErrMetadataOverride matches 400 METADATA_OVERRIDE: the request's
	// metadata sets a key the script sets too.
	ErrMetadataOverride = errors.New("ledgeradapter: ledger answered METADATA_OVERRIDE")
	// ErrNoPostings matches 400 NO_POSTINGS: nothing to move.
	ErrNoPostings = errors.New("ledgeradapter: ledger answered NO_POSTINGS")
	// ErrReferenceConflict matches 409 CONFLICT: another transaction has
	// the reference.
	ErrReferenceConflict = errors.New("ledgeradapter: transaction reference already used")
	// ErrUnauthorized matches a 401 or 403 answer and a failure to obtain an
	// OAuth2 token.
	ErrUnauthorized = errors.New("ledgeradapter: not authorized by the ledger")

	// ErrTimeout: the request took longer than Config.Timeout.
	ErrTimeout = errors.New("ledgeradapter: request timed out")
	// ErrUnexpectedResponse: the answer is not what a Formance ledger sends
	// (undecodable body, unexpected status for the call, a 4xx without an
	// error code, body too large). Retryable: it says nothing about the call.
	ErrUnexpectedResponse = errors.New("ledgeradapter: unexpected response")
)

// Error is every error a Client method returns. Either the ledger answered
// (StatusCode is set, with the ledger's ErrorCode, ErrorMessage and Details
// when its body had them) or it did not (Err holds why: network error,
// timeout, cancellation, token fetch, or a check made before sending).
type Error struct {
	Op     string // Client method, e.g. "AddAccountMetadata"
	Method string // HTTP method, empty when nothing was sent
	URL    string // request URL, userinfo redacted

	StatusCode   int
	ErrorCode    string
	ErrorMessage string
	Details      string

	Err error

	// Element is, for the failure of one element of a bulk, its 1-based
	// position in the request; 0 otherwise. StatusCode is then the status
	// the element's ErrorCode has on the single endpoints, not the bulk's.
	Element int

	// notSent marks a check that failed before any request: permanent.
	notSent bool
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("ledgeradapter: ")
	b.WriteString(e.Op)
	if e.Method != "" {
		b.WriteString(" " + e.Method + " " + e.URL)
	}
	if e.Element != 0 {
		b.WriteString(": element " + strconv.Itoa(e.Element))
	}
	if e.StatusCode != 0 {
		b.WriteString(": " + strconv.Itoa(e.StatusCode))
		if e.ErrorCode != "" {
			b.WriteString(" " + e.ErrorCode)
		}
		if e.ErrorMessage != "" {
			b.WriteString(": " + e.ErrorMessage)
		}
		if e.Details != "" {
			b.WriteString(" (details: " + e.Details + ")")
		}
	}
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the underlying error, if any.
func (e *Error) Unwrap() error { return e.Err }

// Is matches the sentinels that stand for the ledger's error codes.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrValidation:
		return e.ErrorCode == CodeValidation
	case ErrIdempotencyConflict:
		return e.ErrorCode == CodeValidation && strings.Contains(e.ErrorMessage, idempotencyHashMessage)
	case ErrNotFound:
		return e.ErrorCode == CodeNotFound
	case ErrLedgerNotFound:
		return e.ErrorCode == CodeLedgerNotFound
	case ErrLedgerAlreadyExists:
		return e.ErrorCode == CodeLedgerAlreadyExists
	case ErrInsufficientFunds:
		return e.ErrorCode == CodeInsufficientFund
	case ErrCompilationFailed:
		return e.ErrorCode == CodeCompilationFailed || e.ErrorCode == CodeInterpreterParse
	case ErrInterpreterRuntime:
		return e.ErrorCode == CodeInterpreterRuntime
	case ErrMetadataOverride:
		return e.ErrorCode == CodeMetadataOverride
	case ErrNoPostings:
		return e.ErrorCode == CodeNoPostings
	case ErrReferenceConflict:
		return e.StatusCode == http.StatusConflict && e.ErrorCode == CodeConflict
	case ErrUnauthorized:
		return e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden
	}
	return false
}

// Retryable reports whether the same call may succeed later. Yes when the
// ledger did not answer (network error, timeout, token endpoint failure, the
// caller's context ended — the worker redelivers that command), when the
// answer was not a ledger's (ErrUnexpectedResponse), and for 401 and 403
// (a token expired or revoked, a misconfiguration: not the command's fault,
// and the next attempt fetches a new token), 408, 429 and every 5xx,
// including 500 INTERNAL, which racing first writes to a new account produce
// (the retry is an Idempotency-Hit, CONTRACT §3). Every other 4xx answer that
// carries a ledger error code (VALIDATION, LEDGER_NOT_FOUND, ...) is the
// ledger refusing the call for good, and so is a check that failed before
// sending; a 4xx without one did not come from the ledger
// (ErrUnexpectedResponse, retryable).
func (e *Error) Retryable() bool {
	if e.notSent {
		return false
	}
	if e.StatusCode == 0 || errors.Is(e.Err, ErrUnexpectedResponse) {
		return true
	}
	switch {
	case e.StatusCode == http.StatusUnauthorized,
		e.StatusCode == http.StatusForbidden,
		e.StatusCode == http.StatusRequestTimeout,
		e.StatusCode == http.StatusTooManyRequests,
		e.StatusCode >= 500:
		return true
	case e.StatusCode >= 400:
		return false
	}
	// 1xx/2xx/3xx where the call expected something else.
	return true
}

// Temporary is Retryable, under the name some callers look for.
func (e *Error) Temporary() bool { return e.Retryable() }

// IsRetryable reports whether err, returned by a Client method, may go away
// on a later attempt (see Error.Retryable). A bare context error counts as
// retryable; any other error that is not an *Error does not.
func IsRetryable(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Retryable()
	}
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// TokenError is a failure to obtain an OAuth2 token. It carries the token
// endpoint's status and OAuth error code, never the response body, the
// client secret or a token.
type TokenError struct {
	StatusCode int    // 0 when the token endpoint did not answer
	OAuthCode  string // e.g. "invalid_client"
	Err        error  // network error, when the endpoint did not answer
}

func (e *TokenError) Error() string {
	msg := "fetch oauth2 token"
	if e.StatusCode != 0 {
		msg += ": token endpoint answered " + strconv.Itoa(e.StatusCode)
		if e.OAuthCode != "" {
			msg += " (" + e.OAuthCode + ")"
		}
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the network error, if any.
func (e *TokenError) Unwrap() error { return e.Err }

// Is makes a refusal by the token endpoint match ErrUnauthorized.
func (e *TokenError) Is(target error) bool {
	return target == ErrUnauthorized && e.StatusCode >= 400 && e.StatusCode < 500
}

// ctxError is how a request ended by the caller's context surfaces: the
// context's error, and its cause when the caller gave one (a shutdown, say).
func ctxError(ctx context.Context) error {
	err, cause := ctx.Err(), context.Cause(ctx)
	if cause == nil || cause == err {
		return err
	}
	return fmt.Errorf("%w (cause: %w)", err, cause)
}
