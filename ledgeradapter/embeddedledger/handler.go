package embeddedledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Error codes of the real ledger (V2ErrorsEnum) that this server emits.
const (
	codeValidation          = "VALIDATION"
	codeNotFound            = "NOT_FOUND"
	codeLedgerNotFound      = "LEDGER_NOT_FOUND"
	codeLedgerAlreadyExists = "LEDGER_ALREADY_EXISTS"
	codeInternal            = "INTERNAL"
)

const (
	headerIdempotencyKey = "Idempotency-Key"
	headerIdempotencyHit = "Idempotency-Hit"

	defaultBucket = "_default"

	// maxBodyBytes bounds request bodies; the real ledger at this snapshot
	// has no limit, an unmerged branch adds 4 MiB (CONTRACT §5).
	maxBodyBytes = 4 << 20

	internalMessage = "Internal error. Consult logs/traces to have more details."
)

var (
	nameRe        = regexp.MustCompile(`^[0-9a-zA-Z_-]{1,63}$`)
	reservedNames = map[string]bool{"_": true, "_info": true, "_healthcheck": true}
)

// defaultFeatures is the real ledger's DefaultFeatures; the server runs as
// without EXPERIMENTAL_FEATURES, so a ledger can only be created with these.
func defaultFeatures() map[string]string {
	return map[string]string{
		"ACCOUNT_METADATA_HISTORY": "SYNC",
		"HASH_LOGS":                "SYNC",
		"MOVES_HISTORY":            "ON",
		"MOVES_HISTORY_POST_COMMIT_EFFECTIVE_VOLUMES": "SYNC",
		"TRANSACTION_METADATA_HISTORY":                "SYNC",
	}
}

// Handler returns the HTTP API. Every response is application/json.
func (l *Ledger) Handler() http.Handler {
	return http.HandlerFunc(l.serveHTTP)
}

// httpError is an answer in the real ledger's error shape.
type httpError struct {
	status  int
	code    string
	message string
	details string
}

func (e *httpError) Error() string { return e.code + ": " + e.message }

func validationError(format string, args ...any) *httpError {
	return &httpError{status: http.StatusBadRequest, code: codeValidation, message: fmt.Sprintf(format, args...)}
}

func (l *Ledger) serveHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if r.Method == http.MethodPost {
		// A write begins when its request arrives (see errRacingCreate).
		var depart func()
		r, depart = l.withArrival(r)
		defer depart()
	}
	if err := l.route(w, r); err != nil {
		writeError(w, err)
	}
}

// route dispatches on the escaped path, one segment at a time, so that an
// address holding an escaped "/" stays one segment (as the real chi router).
func (l *Ledger) route(w http.ResponseWriter, r *http.Request) error {
	raw := strings.Split(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/")
	seg := make([]string, len(raw))
	for i, s := range raw {
		u, err := url.PathUnescape(s)
		if err != nil {
			e := validationError("invalid path")
			e.details = err.Error()
			return e
		}
		if u == "" {
			return routeNotFound()
		}
		seg[i] = u
	}

	switch {
	case len(seg) == 1 && seg[0] == "_healthcheck":
		if r.Method != http.MethodGet {
			return methodNotAllowed(w, http.MethodGet)
		}
		if err := l.r.PingContext(r.Context()); err != nil {
			return l.internalError(err)
		}
		// The real ledger's answer when its storage is migrated.
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, `{"storage-driver-up-to-date":"OK"}`)
		return nil
	case len(seg) < 2 || seg[0] != "v2":
		return routeNotFound()
	case len(seg) == 2:
		switch r.Method {
		case http.MethodGet:
			return l.getLedgerHandler(w, r, seg[1])
		case http.MethodPost:
			return l.createLedgerHandler(w, r, seg[1])
		}
		return methodNotAllowed(w, http.MethodGet, http.MethodPost)
	}

	name, rest := seg[1], seg[2:]
	var method string
	var handle func(ledgerRow) error
	switch {
	case len(rest) == 1 && rest[0] == "logs":
		method = http.MethodGet
		handle = func(lg ledgerRow) error { return l.listLogsHandler(w, r, lg) }
	case len(rest) == 1 && rest[0] == "_bulk":
		method = http.MethodPost
		handle = func(lg ledgerRow) error { return l.bulkHandler(w, r, lg) }
	case len(rest) == 1 && rest[0] == "accounts":
		method = http.MethodGet
		handle = func(lg ledgerRow) error { return l.listAccountsHandler(w, r, lg) }
	case len(rest) == 1 && rest[0] == "transactions" && r.Method == http.MethodPost:
		method = http.MethodPost
		handle = func(lg ledgerRow) error { return l.createTransactionHandler(w, r, lg) }
	case len(rest) == 1 && rest[0] == "transactions":
		method = http.MethodGet
		handle = func(lg ledgerRow) error { return l.listTransactionsHandler(w, r, lg) }
	case len(rest) == 2 && rest[0] == "transactions":
		method = http.MethodGet
		handle = func(lg ledgerRow) error { return l.getTransactionHandler(w, r, lg, rest[1]) }
	case len(rest) == 2 && rest[0] == "accounts":
		method = http.MethodGet
		handle = func(lg ledgerRow) error { return l.getAccountHandler(w, r, lg, rest[1]) }
	case len(rest) == 3 && rest[0] == "accounts" && rest[2] == "metadata":
		method = http.MethodPost
		handle = func(lg ledgerRow) error { return l.addAccountMetadataHandler(w, r, lg, rest[1]) }
	case len(rest) == 4 && rest[0] == "accounts" && rest[2] == "metadata":
		method = http.MethodDelete
		handle = func(lg ledgerRow) error { return l.deleteAccountMetadataHandler(w, r, lg, rest[1], rest[3]) }
	default:
		return routeNotFound()
	}
	if r.Method != method {
		return methodNotAllowed(w, method)
	}

	// The real LedgerMiddleware: an unknown ledger is 404 LEDGER_NOT_FOUND
	// before anything else about the request is looked at.
	lg, ok, err := l.getLedger(r.Context(), name)
	if err != nil {
		return l.internalError(err)
	}
	if !ok {
		return &httpError{status: http.StatusNotFound, code: codeLedgerNotFound, message: "not found"}
	}
	return handle(lg)
}

func methodNotAllowed(w http.ResponseWriter, methods ...string) error {
	w.Header().Set("Allow", strings.Join(methods, ", "))
	return &httpError{status: http.StatusMethodNotAllowed, code: codeValidation, message: "method not allowed"}
}

// errRouteNotFound answers a path that is no route: the real ledger's
// router answers it with Go's plain-text 404, not in its error shape.
var errRouteNotFound = errors.New("route not found")

func routeNotFound() error { return errRouteNotFound }

// internalError answers the real ledger's generic 500 and logs the cause,
// which the real one also keeps out of the response.
func (l *Ledger) internalError(err error) error {
	if errors.Is(err, errRacingCreate) {
		l.log.Info("embeddedledger: answered 500 to a racing first write of an account, as the real ledger does", "err", err)
	} else {
		l.log.Error("embeddedledger: internal error", "err", err)
	}
	return &httpError{status: http.StatusInternalServerError, code: codeInternal, message: internalMessage}
}

func writeError(w http.ResponseWriter, err error) {
	if errors.Is(err, errRouteNotFound) {
		http.Error(w, "404 page not found", http.StatusNotFound)
		return
	}
	var he *httpError
	if !errors.As(err, &he) {
		he = &httpError{status: http.StatusInternalServerError, code: codeInternal, message: internalMessage}
	}
	writeJSON(w, he.status, errorResponse{ErrorCode: he.code, ErrorMessage: he.message, Details: he.details})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(errorResponse{ErrorCode: codeInternal, ErrorMessage: internalMessage})
	}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// ---- ledgers ----

func (l *Ledger) getLedgerHandler(w http.ResponseWriter, r *http.Request, name string) error {
	lg, ok, err := l.getLedger(r.Context(), name)
	if err != nil {
		return l.internalError(err)
	}
	if !ok {
		return &httpError{status: http.StatusNotFound, code: codeNotFound, message: "not found"}
	}
	writeJSON(w, http.StatusOK, dataResponse{Data: ledgerView{
		ID: lg.ID, Name: lg.Name, Bucket: lg.Bucket, Metadata: nonNil(lg.Metadata),
		Features: lg.Features, AddedAt: formatTime(lg.AddedAt),
	}})
	return nil
}

type createLedgerRequest struct {
	Bucket   string            `json:"bucket"`
	Metadata map[string]string `json:"metadata"`
	Features map[string]string `json:"features"`
}

func (l *Ledger) createLedgerHandler(w http.ResponseWriter, r *http.Request, name string) error {
	var req createLedgerRequest
	body, err := readBody(r)
	if err != nil {
		return err
	}
	// An empty body means defaults, although the OpenAPI marks it required.
	if len(strings.TrimSpace(string(body))) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			return validationError("%s", err)
		}
	}
	if !nameRe.MatchString(name) || reservedNames[name] {
		return validationError("invalid ledger name: %q", name)
	}
	if req.Bucket == "" {
		req.Bucket = defaultBucket
	} else if !nameRe.MatchString(req.Bucket) {
		return validationError("invalid bucket name: %q", req.Bucket)
	}
	features := defaultFeatures()
	for k, v := range req.Features {
		def, known := features[k]
		if !known {
			return validationError("unknown feature: %s", k)
		}
		if v != def {
			return validationError("experimental features are disabled")
		}
	}

	err = l.createLedger(r.Context(), ledgerRow{
		Name: name, Bucket: req.Bucket, Metadata: nonNil(req.Metadata), Features: features,
		AddedAt: l.now().UTC().Truncate(time.Microsecond),
	})
	if errors.Is(err, errLedgerExists) {
		return &httpError{status: http.StatusBadRequest, code: codeLedgerAlreadyExists, message: "ledger already exists"}
	}
	if err != nil {
		return l.internalError(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// ---- accounts ----

func (l *Ledger) getAccountHandler(w http.ResponseWriter, r *http.Request, lg ledgerRow, address string) error {
	if pit := queryValue(r, "pit"); pit != "" {
		if _, err := time.Parse(time.RFC3339Nano, pit); err != nil {
			return validationError("invalid 'pit' query param: %s", err)
		}
	}
	a, ok, err := l.getAccount(r.Context(), lg.ID, address)
	if err != nil {
		return l.internalError(err)
	}
	if !ok {
		return &httpError{status: http.StatusNotFound, code: codeNotFound, message: "not found"}
	}
	view := accountView{
		Address: a.Address, Metadata: nonNil(a.Metadata),
		FirstUsage: formatTime(a.FirstUsage), InsertionDate: formatTime(a.InsertionDate), UpdatedAt: formatTime(a.UpdatedAt),
	}
	if err := l.expandAccount(r.Context(), lg.ID, &view, r.URL.Query()["expand"]); err != nil {
		return l.internalError(err)
	}
	writeJSON(w, http.StatusOK, dataResponse{Data: view})
	return nil
}

func (l *Ledger) addAccountMetadataHandler(w http.ResponseWriter, r *http.Request, lg ledgerRow, address string) error {
	dryRun, ik, err := writeParams(r)
	if err != nil {
		return err
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	// A flat string map; null is accepted and hashes as "Metadata":null.
	var md map[string]string
	if err := json.Unmarshal(body, &md); err != nil {
		return validationError("%s", err)
	}
	return l.commitWrite(w, r, write{
		ledgerID: lg.ID, ikey: ik, dryRun: dryRun,
		ihash: idempotencyHash(saveAccountMetadataInput{Address: address, Metadata: md}),
		apply: saveAccountMetadata(lg.ID, address, md), account: address,
	})
}

func (l *Ledger) deleteAccountMetadataHandler(w http.ResponseWriter, r *http.Request, lg ledgerRow, address, key string) error {
	dryRun, ik, err := writeParams(r)
	if err != nil {
		return err
	}
	return l.commitWrite(w, r, write{
		ledgerID: lg.ID, ikey: ik, dryRun: dryRun,
		ihash: idempotencyHash(deleteAccountMetadataInput{Address: address, Key: key}),
		apply: deleteAccountMetadata(lg.ID, address, key),
	})
}

// writeParams reads what every log-producing write takes: dryRun,
// schemaVersion and the Idempotency-Key header.
func writeParams(r *http.Request) (dryRun bool, ik string, err error) {
	if r.URL.RawQuery == "" {
		return false, r.Header.Get(headerIdempotencyKey), nil
	}
	q := r.URL.Query()
	switch v := strings.ToLower(q.Get("dryRun")); v {
	case "true", "1":
		dryRun = true
	}
	if v := q.Get("schemaVersion"); v != "" {
		// No schema can be inserted here, so every version is unknown.
		return false, "", &httpError{status: http.StatusNotFound, code: codeNotFound, message: fmt.Sprintf("schema %s not found", v)}
	}
	return dryRun, r.Header.Get(headerIdempotencyKey), nil
}

func (l *Ledger) commitWrite(w http.ResponseWriter, r *http.Request, wr write) error {
	if utf8.RuneCountInString(wr.ikey) > maxIdempotencyKeyLen {
		// The real ledger's varchar(255) rejects the log insert with an
		// unmapped Postgres error (inferred, CONTRACT §3).
		return &httpError{status: http.StatusInternalServerError, code: codeInternal, message: internalMessage}
	}
	if wr.ikey == "" {
		wr.ihash = ""
	}
	_, hit, err := l.write(r.Context(), wr)
	if err != nil {
		return l.writeError(err)
	}
	if hit {
		w.Header().Set(headerIdempotencyHit, "true")
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// writeError is the answer to a write that did not apply.
func (l *Ledger) writeError(err error) error {
	var mismatch *idempotencyMismatchError
	var he *httpError
	switch {
	case errors.As(err, &mismatch):
		return validationError("%s", mismatch)
	case errors.As(err, &he):
		return he
	}
	return l.internalError(err)
}

// queryValue is r.URL.Query().Get(key) without parsing a query that cannot
// hold the key (the worker's reads carry only expand=volumes).
func queryValue(r *http.Request, key string) string {
	if !strings.Contains(r.URL.RawQuery, key) {
		return ""
	}
	return r.URL.Query().Get(key)
}

func readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, validationError("request body too large")
		}
		return nil, validationError("read request body: %s", err)
	}
	return b, nil
}

// ---- logs ----

func (l *Ledger) listLogsHandler(w http.ResponseWriter, r *http.Request, lg ledgerRow) error {
	qs := r.URL.Query()
	var q logsQuery
	if c := qs.Get("cursor"); c != "" {
		// As in the real ledger, a cursor carries the whole query and every
		// other parameter is ignored.
		var err error
		if q, err = decodeCursor(c); err != nil {
			return validationError("invalid 'cursor' query param")
		}
	} else {
		q.PageSize = DefaultPageSize
		if v := qs.Get("pageSize"); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return validationError("invalid 'pageSize' query param")
			}
			switch {
			case n == 0:
			case n > MaxPageSize:
				q.PageSize = MaxPageSize
			default:
				q.PageSize = int(n)
			}
		}
		if pit := qs.Get("pit"); pit != "" {
			if _, err := time.Parse(time.RFC3339Nano, pit); err != nil {
				return validationError("invalid 'pit' query param: %s", err)
			}
		}
		if s := qs.Get("sort"); s != "" && s != "id:desc" && s != "id" {
			return validationError("unsupported sort %q: only id:desc is implemented", s)
		}
	}

	page, err := l.listLogs(r.Context(), lg.ID, q)
	if err != nil {
		return l.internalError(err)
	}
	views := make([]logView, 0, len(page.Logs))
	for _, lr := range page.Logs {
		views = append(views, logView{
			ID: lr.ID, Type: lr.Type, Data: lr.Data, Date: formatTime(lr.Date),
			IdempotencyKey: lr.IdempotencyKey, IdempotencyHash: lr.IdempotencyHsh, Hash: lr.Hash,
		})
	}
	writeJSON(w, http.StatusOK, logsCursorResponse{Cursor: logsCursor{
		PageSize: q.PageSize, HasMore: page.HasMore,
		Previous: encodeCursor(page.Previous), Next: encodeCursor(page.Next), Data: views,
	}})
	return nil
}
