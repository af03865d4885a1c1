package embeddedledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"
)

// BulkMaxSize is the real server's BULK_MAX_SIZE default: a larger bulk is
// refused whole with 413 BULK_SIZE_EXCEEDED.
const BulkMaxSize = 100

// Bulk actions and result types, as the real ledger names them.
const (
	actionCreateTransaction = "CREATE_TRANSACTION"
	actionAddMetadata       = "ADD_METADATA"
	actionRevertTransaction = "REVERT_TRANSACTION"
	actionDeleteMetadata    = "DELETE_METADATA"
	resultError             = "ERROR"

	codeBulkSizeExceeded = "BULK_SIZE_EXCEEDED"
	targetTypeTx         = "TRANSACTION"
)

// bulkElement is V2BulkElement: the payload is decoded by action when the
// body is read, so that an unknown action or a malformed payload refuses
// the whole bulk, as in the real ledger.
type bulkElement struct {
	Action string          `json:"action"`
	IK     string          `json:"ik"`
	Data   json.RawMessage `json:"data"`

	metadata *metadataPayload
	del      *deletePayload
	revert   *revertPayload
	tx       *txRequest
	txErr    *httpError // a transaction request its endpoint would refuse
}

type metadataPayload struct {
	TargetType string            `json:"targetType"`
	TargetID   json.RawMessage   `json:"targetId"`
	Metadata   map[string]string `json:"metadata"`
}

type deletePayload struct {
	TargetType string          `json:"targetType"`
	TargetID   json.RawMessage `json:"targetId"`
	Key        string          `json:"key"`
}

type revertPayload struct {
	ID uint64 `json:"id"`
}

func (e *bulkElement) decode() error {
	var into any
	switch e.Action {
	case actionAddMetadata:
		e.metadata = &metadataPayload{}
		into = e.metadata
	case actionDeleteMetadata:
		e.del = &deletePayload{}
		into = e.del
	case actionRevertTransaction:
		e.revert = &revertPayload{}
		into = e.revert
	case actionCreateTransaction:
		// Decoded whole here, checked when the element runs: the real
		// ledger refuses an invalid transaction element by itself.
		var raw map[string]any
		if err := json.Unmarshal(e.Data, &raw); err != nil {
			return fmt.Errorf("error parsing element: %s", err)
		}
		req, herr := decodeTxRequest(e.Data)
		e.tx, e.txErr = &req, herr
		return nil
	}
	if into == nil {
		return fmt.Errorf("error parsing element: unknown action %q", e.Action)
	}
	if err := json.Unmarshal(e.Data, into); err != nil {
		return fmt.Errorf("error parsing element: %s", err)
	}
	return nil
}

// bulkResult is V2BulkElementResult: the action's name and its log on
// success, ERROR with the code and description of the failure otherwise.
type bulkResult struct {
	// Data is the transaction a CREATE_TRANSACTION element created.
	Data             *transactionView `json:"data,omitempty"`
	ErrorCode        string           `json:"errorCode,omitempty"`
	ErrorDescription string           `json:"errorDescription,omitempty"`
	ResponseType     string           `json:"responseType"`
	LogID            int64            `json:"logID"`
}

// elementError is the failure of one element: its error code and text.
type elementError struct {
	code    string
	message string
}

func (e *elementError) Error() string { return e.message }

// bulkHandler is POST /v2/{ledger}/_bulk with a JSON body (the real
// ledger's JsonBulkHandler and Bulker, internal/api/bulking): every element
// is the same write as its single endpoint, with its own idempotency key in
// the ledger's one key space, and is answered in order. 200 when every
// element succeeded, 400 when one failed, with one result per element.
// continueOnFailure=false answers every element after a failure with
// INTERNAL "context canceled". atomic=true runs the bulk in one
// transaction that a failure rolls back whole, while the results still
// show the elements before it as applied: the real ledger does the same.
// parallel=true makes the elements concurrent writes, as the real ledger
// runs them on a pool: two of them creating one new account race, and one
// fails with INTERNAL (see errRacingCreate). They still run one after
// another here and answer in order (the real ledger's order is its
// elements' completion order, see ledgeradapter.Client.Bulk), and a failure
// without continueOnFailure cancels the elements after it.
func (l *Ledger) bulkHandler(w http.ResponseWriter, r *http.Request, lg ledgerRow) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			// The real ledger also takes two streaming formats, not here.
			return validationError("unsupported content type: %s", strings.Split(ct, ";")[0])
		}
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	var elems []bulkElement
	if err := json.Unmarshal(body, &elems); err != nil {
		return validationError("%s", err)
	}
	for i := range elems {
		if err := elems[i].decode(); err != nil {
			return validationError("%s", err)
		}
	}
	if len(elems) > BulkMaxSize {
		return &httpError{status: http.StatusRequestEntityTooLarge, code: codeBulkSizeExceeded,
			message: fmt.Sprintf("bulk size exceeded, max size is %d", BulkMaxSize)}
	}
	q := r.URL.Query()
	opts := bulkOptions{
		continueOnFailure: queryBool(q.Get("continueOnFailure")),
		atomic:            queryBool(q.Get("atomic")),
		parallel:          queryBool(q.Get("parallel")),
		schemaVersion:     q.Get("schemaVersion"),
	}
	if opts.atomic && opts.parallel {
		return &httpError{status: http.StatusPreconditionFailed, code: codeValidation,
			message: "validating bulk options: atomic and parallel options are mutually exclusive"}
	}

	results, err := l.bulk(r.Context(), lg.ID, elems, opts)
	if err != nil {
		return l.internalError(err)
	}
	status := http.StatusOK
	for _, res := range results {
		if res.ResponseType == resultError {
			status = http.StatusBadRequest
			break
		}
	}
	writeJSON(w, status, dataResponse{Data: results})
	return nil
}

func queryBool(v string) bool {
	v = strings.ToLower(v)
	return v == "true" || v == "1"
}

type bulkOptions struct {
	continueOnFailure bool
	atomic            bool
	parallel          bool
	schemaVersion     string
}

// bulk applies elems in order, in one transaction (shared with the
// writes committed together with it, see group.go), and commits before
// answering. Only the answer tells a client what was applied, so one commit
// for the bulk is indistinguishable from one per element, except to a
// reader that looks while the bulk runs. An element refused (an
// idempotency mismatch, a race, an element error) changed nothing before it
// was refused, so it needs no savepoint; a failed atomic bulk rolls back to
// the savepoint taken before its first element. An error is a storage
// failure: the whole request then answers 500.
func (l *Ledger) bulk(ctx context.Context, ledgerID int64, elems []bulkElement, opts bulkOptions) ([]bulkResult, error) {
	arrival, depart := l.arrivalOf(ctx)
	defer depart()
	created := false
	// One origin for the request, or one per element when they are
	// concurrent: origins[0] is the first of len(elems) reserved ones.
	last := l.origins.Add(uint64(max(len(elems), 1)))
	origin := func(i int) uint64 {
		if opts.parallel {
			return last - uint64(len(elems)-1-i)
		}
		return last
	}

	results := make([]bulkResult, len(elems))
	j := &job{ctx: ctx, weight: max(len(elems), 1), run: func(g *groupTx) error {
		before := len(g.created.list)
		defer func() { created = created || len(g.created.list) > before }()
		var m groupMark
		if opts.atomic {
			var err error
			if m, err = g.mark("atomic_bulk"); err != nil {
				return err
			}
		}
		tip := g.tip(ledgerID)
		failed := false
		for i, el := range elems {
			var eerr error
			switch {
			case ctx.Err() != nil:
				eerr = ctx.Err()
			case failed && !opts.continueOnFailure:
				eerr = context.Canceled
			default:
				var logID int64
				var tx *transactionView
				logID, tx, eerr = l.bulkElement(g, ledgerID, el, opts, tip, arrival, origin(i))
				if eerr == nil {
					results[i] = bulkResult{ResponseType: el.Action, LogID: logID, Data: tx}
					continue
				}
				var ee *elementError
				if !isAnswer(eerr) && !errors.As(eerr, &ee) {
					return eerr
				}
			}
			failed = true
			results[i] = bulkResult{ResponseType: resultError, ErrorCode: elementErrorCode(eerr), ErrorDescription: eerr.Error()}
		}
		switch {
		case !opts.atomic:
			return nil
		case failed:
			if err := g.rollbackTo(m); err != nil {
				return err
			}
			// The ids the rolled back transactions took stay used, as the
			// real ledger's sequence does not roll back.
			if last := lastTxID(results); last > 0 {
				if _, err := g.tx.ExecContext(g.ctx, qSetLastTxID, ledgerID, last); err != nil {
					return fmt.Errorf("advance transaction sequence: %w", err)
				}
			}
			return nil
		default:
			return g.release(m)
		}
	}}
	if err := l.submit(j); err != nil {
		return nil, err
	}
	if created {
		l.races.linger(ctx, arrival)
	}
	return results, nil
}

// lastTxID is the highest id of a transaction the results report.
func lastTxID(results []bulkResult) int64 {
	var last int64
	for _, r := range results {
		if r.Data != nil {
			last = max(last, r.Data.ID)
		}
	}
	return last
}

// elementErrorCode is the real ledger's mapBulkElementError for the
// failures an element can have here.
func elementErrorCode(err error) string {
	var mismatch *idempotencyMismatchError
	var ee *elementError
	var he *httpError
	switch {
	case errors.As(err, &mismatch):
		return codeValidation
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &he):
		return he.code
	}
	return codeInternal
}

// bulkElement applies one element in the group transaction. It returns the
// element's log and, for a transaction, the transaction created (or, on an
// idempotency hit, first created).
func (l *Ledger) bulkElement(g *groupTx, ledgerID int64, el bulkElement, opts bulkOptions, tip *logTip, arrival arrival, origin uint64) (int64, *transactionView, error) {
	if opts.schemaVersion != "" {
		// No schema can be inserted here, so every version is unknown.
		return 0, nil, &elementError{code: codeNotFound, message: fmt.Sprintf("schema %s not found", opts.schemaVersion)}
	}
	wr, err := l.bulkWrite(ledgerID, el)
	if err != nil {
		return 0, nil, err
	}
	wr.arrival, wr.origin = arrival, origin
	var created *newTransactionPayload
	if el.tx != nil {
		apply := wr.apply
		wr.apply = func(ctx context.Context, tx querier, now time.Time) (string, any, bool, error) {
			typ, payload, c, err := apply(ctx, tx, now)
			if err == nil {
				p := payload.(newTransactionPayload)
				created = &p
			}
			return typ, payload, c, err
		}
	}
	logID, hit, err := l.forge(g.ctx, g.tx, wr, tip, &g.created)
	switch {
	case errors.Is(err, errRacingCreate):
		return 0, nil, &elementError{code: codeInternal, message: err.Error()}
	case err != nil || el.tx == nil:
		return logID, nil, err
	case hit:
		var raw string
		if err := g.tx.QueryRowContext(g.ctx, qLogData, ledgerID, logID).Scan(&raw); err != nil {
			return 0, nil, fmt.Errorf("read replayed log: %w", err)
		}
		var p newTransactionPayload
		if err := json.Unmarshal([]byte(raw), &p); err != nil {
			return 0, nil, fmt.Errorf("replayed log %d is not a transaction: %w", logID, err)
		}
		created = &p
	}
	return logID, &created.Transaction, nil
}

// bulkWrite is the write an element stands for: the same as its single
// endpoint's, idempotency hash included.
func (l *Ledger) bulkWrite(ledgerID int64, el bulkElement) (write, error) {
	wr := write{ledgerID: ledgerID, ikey: el.IK}
	if utf8.RuneCountInString(el.IK) > maxIdempotencyKeyLen {
		// The real ledger's varchar(255) fails the log insert (inferred).
		return write{}, &elementError{code: codeInternal, message: "idempotency key longer than 255 characters"}
	}
	switch el.Action {
	case actionAddMetadata:
		p := el.metadata
		switch p.TargetType {
		case targetTypeAccount:
			var address string
			if err := json.Unmarshal(p.TargetID, &address); err != nil {
				return write{}, &elementError{code: codeInternal, message: err.Error()}
			}
			wr.ihash = idempotencyHash(saveAccountMetadataInput{Address: address, Metadata: p.Metadata})
			wr.apply = saveAccountMetadata(ledgerID, address, p.Metadata)
			wr.account = address
		case targetTypeTx:
			return write{}, noTransaction(p.TargetID)
		default:
			return write{}, &elementError{code: codeInternal, message: "invalid target type: " + p.TargetType}
		}
	case actionDeleteMetadata:
		p := el.del
		switch p.TargetType {
		case targetTypeAccount:
			var address string
			if err := json.Unmarshal(p.TargetID, &address); err != nil {
				return write{}, &elementError{code: codeInternal, message: err.Error()}
			}
			wr.ihash = idempotencyHash(deleteAccountMetadataInput{Address: address, Key: p.Key})
			wr.apply = deleteAccountMetadata(ledgerID, address, p.Key)
		case targetTypeTx:
			return write{}, noTransaction(p.TargetID)
		default:
			return write{}, &elementError{code: codeInternal, message: "unsupported target type: " + p.TargetType}
		}
	case actionRevertTransaction:
		return write{}, &elementError{code: codeNotFound, message: fmt.Sprintf("transaction %d not found", el.revert.ID)}
	default: // CREATE_TRANSACTION
		if el.txErr != nil {
			return write{}, &elementError{code: el.txErr.code, message: el.txErr.message}
		}
		return l.txWrite(ledgerID, *el.tx, el.IK), nil
	}
	if wr.ikey == "" {
		wr.ihash = ""
	}
	return wr, nil
}

// noTransaction answers an element about a transaction: none exists here.
func noTransaction(id json.RawMessage) error {
	return &elementError{code: codeNotFound, message: fmt.Sprintf("transaction %s not found", id)}
}
