package ledgeradapter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

const (
	// maxResponseBytes bounds what is read of an answer; ledger answers to
	// our calls are small (an account's metadata is under 64 KiB).
	maxResponseBytes = 1 << 20
	// maxLogsResponseBytes bounds a page of up to MaxLogsPageSize logs.
	maxLogsResponseBytes = 32 << 20
	// maxBulkElementResponseBytes bounds what each element of a bulk may
	// add to its answer, as maxResponseBytes bounds a single call's: a
	// transaction bulk echoes each transaction with its metadata and
	// volumes (a chain of credits of tens of KiB of metadata each answers
	// megabytes).
	maxBulkElementResponseBytes = maxResponseBytes
	// drainBytes is how much of an unread body is drained so that the
	// connection can be reused; beyond it the connection is dropped.
	drainBytes = 64 << 10
	// maxIdempotencyKeyLen mirrors the ledger's varchar(255) column.
	maxIdempotencyKeyLen = 255
	// MaxLogsPageSize is the real server's MAX_PAGE_SIZE default.
	MaxLogsPageSize = 100

	headerIdempotencyKey = "Idempotency-Key"
	headerIdempotencyHit = "Idempotency-Hit"
	userAgent            = "wallets-worker-ledgeradapter"
)

// Client talks to one Formance Ledger v2. It is safe for concurrent use and
// reuses connections; build one per process.
type Client struct {
	base    string // BaseURL without trailing slash
	hc      *http.Client
	timeout time.Duration
	// perElement is added to timeout per element beyond the first.
	perElement   time.Duration
	parallelBulk bool
	tokens       *tokenSource // nil without OAuth2
	observe      func(op string, status int, d time.Duration)
	tx           *txGate
	// listCap is the page size the server was seen to cap ListAccounts
	// to, 0 until then.
	listCap atomic.Int64
}

// NewClient validates cfg (with defaults applied) and builds a Client.
func NewClient(cfg Config) (*Client, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rt := newTransport(cfg)
	hc := &http.Client{Transport: tracedTransport(rt, cfg.TracerProvider)}
	if cfg.HTTPClient != nil {
		hc.CheckRedirect, hc.Jar = cfg.HTTPClient.CheckRedirect, cfg.HTTPClient.Jar
	}
	c := &Client{
		base: strings.TrimRight(cfg.BaseURL, "/"), hc: hc, timeout: cfg.Timeout,
		perElement: max(cfg.TimeoutPerElement, 0), parallelBulk: !cfg.SequentialBulk, observe: cfg.Observe,
		tx: newTxGate(cfg.TxConcurrency, cfg.Logger),
	}
	if cfg.ClientID != "" {
		c.tokens = newTokenSource(cfg, &http.Client{Transport: rt, Timeout: cfg.Timeout})
	}
	return c, nil
}

// newTransport returns the one RoundTripper every request goes through.
func newTransport(cfg Config) http.RoundTripper {
	var t *http.Transport
	if cfg.HTTPClient != nil && cfg.HTTPClient.Transport != nil {
		base, ok := cfg.HTTPClient.Transport.(*http.Transport)
		if !ok {
			return cfg.HTTPClient.Transport
		}
		t = base.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true}
	}
	connect := min(cfg.Timeout, 10*time.Second)
	if t.DialContext == nil {
		t.DialContext = (&net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}).DialContext
	}
	if t.MaxIdleConnsPerHost < MaxIdleConnsPerHost {
		t.MaxIdleConnsPerHost = MaxIdleConnsPerHost
	}
	if t.MaxIdleConns != 0 && t.MaxIdleConns < MaxIdleConnsPerHost {
		t.MaxIdleConns = MaxIdleConnsPerHost
	}
	if t.IdleConnTimeout == 0 {
		t.IdleConnTimeout = 90 * time.Second
	}
	if t.TLSHandshakeTimeout == 0 {
		t.TLSHandshakeTimeout = connect
	}
	if t.ResponseHeaderTimeout == 0 {
		// The longest a request may take: the largest bulk's.
		t.ResponseHeaderTimeout = cfg.TimeoutFor(MaxBulkSize)
	}
	if t.ExpectContinueTimeout == 0 {
		t.ExpectContinueTimeout = time.Second
	}
	return t
}

// TimeoutFor is the timeout of a request of n elements (Config.TimeoutFor).
func (c *Client) TimeoutFor(n int) time.Duration {
	return c.timeout + time.Duration(max(n-1, 0))*c.perElement
}

// CloseIdleConnections closes pooled connections, e.g. at shutdown.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// EnsureLedger makes sure the ledger exists: GET /v2/{name}, and on 404
// NOT_FOUND POST /v2/{name} with {"bucket": name}, as the wallets service
// does (CONTRACT §8), so that whichever of the two creates the ledger, it has
// the same bucket. LEDGER_ALREADY_EXISTS is success: another process won the
// race.
func (c *Client) EnsureLedger(ctx context.Context, name string) error {
	const op = "EnsureLedger"
	if err := ValidateLedgerName(name); err != nil {
		return notSent(op, err)
	}
	path := "/v2/" + url.PathEscape(name)
	// get says whether the ledger is there; a 404 NOT_FOUND is its absence,
	// kept as the error to report if it stays absent.
	get := func() (bool, *Error) {
		resp, e := c.do(ctx, request{op: op, method: http.MethodGet, path: path})
		if e != nil {
			return false, e
		}
		switch {
		case resp.status == http.StatusOK:
			var body struct {
				Data *struct {
					Name string `json:"name"`
				} `json:"data"`
			}
			if err := json.Unmarshal(resp.body, &body); err != nil || body.Data == nil || body.Data.Name != name {
				return false, resp.unexpected(fmt.Errorf("%w: not a ledger named %q", ErrUnexpectedResponse, name))
			}
			return true, nil
		}
		return false, resp.fail()
	}
	found, absent := get()
	switch {
	case found:
		return nil
	case absent.StatusCode != http.StatusNotFound || absent.ErrorCode != CodeNotFound:
		return absent
	}

	body, err := json.Marshal(map[string]string{"bucket": name})
	if err != nil {
		return notSent(op, err)
	}
	resp, e := c.do(ctx, request{op: op, method: http.MethodPost, path: path, body: body})
	if e != nil {
		return e
	}
	switch {
	case resp.status == http.StatusNoContent:
		return nil
	case resp.status == http.StatusBadRequest && resp.errorCode() == CodeLedgerAlreadyExists:
		// Another process created it meanwhile, or the name is a deleted
		// ledger's: the ledger keeps the names of deleted ledgers, whose
		// reads answer NOT_FOUND (and every write LEDGER_NOT_FOUND). Only
		// the first is a ledger to write to.
		found, e := get()
		switch {
		case found:
			return nil
		case e.StatusCode == http.StatusNotFound && e.ErrorCode == CodeNotFound:
			e.Err = fmt.Errorf("ledger %q cannot be created (its name is taken) nor read: a deleted ledger's name?", name)
		}
		return e
	}
	return resp.fail()
}

// GetAccount reads an account with its volumes. A never-touched account is
// (Account{}, false, nil): the ledger's 404 NOT_FOUND. Any other answer that
// is not 200, 404 LEDGER_NOT_FOUND included, is an error.
func (c *Client) GetAccount(ctx context.Context, ledger, address string) (Account, bool, error) {
	const op = "GetAccount"
	if err := errors.Join(ValidateLedgerName(ledger), ValidateAddress(address)); err != nil {
		return Account{}, false, notSent(op, err)
	}
	resp, e := c.do(ctx, request{
		op: op, method: http.MethodGet,
		path:  "/v2/" + url.PathEscape(ledger) + "/accounts/" + url.PathEscape(address),
		query: url.Values{"expand": {"volumes"}},
	})
	if e != nil {
		return Account{}, false, e
	}
	switch {
	case resp.status == http.StatusOK:
		var body struct {
			Data *accountWire `json:"data"`
		}
		if err := json.Unmarshal(resp.body, &body); err != nil || body.Data == nil {
			return Account{}, false, resp.unexpected(fmt.Errorf("%w: not an account: %v", ErrUnexpectedResponse, err))
		}
		return body.Data.account(), true, nil
	case resp.status == http.StatusNotFound && resp.errorCode() == CodeNotFound:
		return Account{}, false, nil
	}
	return Account{}, false, resp.fail()
}

// AddAccountMetadata merges metadata into the account's (sent keys
// overwrite, others stay; a missing account is created). A non-empty
// idempotencyKey is sent as Idempotency-Key: a retry with the same key and
// input is a no-op answered with IdempotencyHit, the same key with another
// input an error matching ErrIdempotencyConflict. A nil map is sent as {}, so
// that nil and empty hash alike on the ledger.
func (c *Client) AddAccountMetadata(ctx context.Context, ledger, address string, metadata map[string]string, idempotencyKey string) (WriteResult, error) {
	return c.addAccountMetadata(ctx, "AddAccountMetadata", ledger, address, metadata, idempotencyKey, false)
}

// DryRunAccountMetadata sends the same request as AddAccountMetadata with
// dryRun=true: the ledger checks it and writes nothing, and does not take
// the key. Under a key that already applied the same input, it answers
// IdempotencyHit (v2.4.12 looks the key up before the dry run); under a key
// that applied another input, an error matching ErrIdempotencyConflict;
// otherwise a WriteResult without a hit, whatever the account holds. It is
// how a caller learns, without writing, whether a write it may have made
// under a key was made.
func (c *Client) DryRunAccountMetadata(ctx context.Context, ledger, address string, metadata map[string]string, idempotencyKey string) (WriteResult, error) {
	return c.addAccountMetadata(ctx, "DryRunAccountMetadata", ledger, address, metadata, idempotencyKey, true)
}

func (c *Client) addAccountMetadata(ctx context.Context, op, ledger, address string, metadata map[string]string, idempotencyKey string, dryRun bool) (WriteResult, error) {
	if err := errors.Join(ValidateLedgerName(ledger), ValidateAddress(address), validateIdempotencyKey(idempotencyKey)); err != nil {
		return WriteResult{}, notSent(op, err)
	}
	if metadata == nil {
		metadata = map[string]string{}
	}
	body, err := json.Marshal(metadata)
	if err != nil {
		return WriteResult{}, notSent(op, err)
	}
	var query url.Values
	if dryRun {
		query = url.Values{"dryRun": {"true"}}
	}
	resp, e := c.do(ctx, request{
		op: op, method: http.MethodPost,
		path:  "/v2/" + url.PathEscape(ledger) + "/accounts/" + url.PathEscape(address) + "/metadata",
		query: query, body: body, idempotencyKey: idempotencyKey,
	})
	if e != nil {
		return WriteResult{}, e
	}
	if resp.status != http.StatusNoContent {
		return WriteResult{}, resp.fail()
	}
	return WriteResult{IdempotencyHit: strings.EqualFold(resp.header.Get(headerIdempotencyHit), "true")}, nil
}

// ListLogs reads one page of the ledger's logs, newest first. pageSize 0
// lets the server choose (15 by default); it caps it (100 by default). With a
// cursor from a previous page, pageSize is not sent: the cursor carries it.
func (c *Client) ListLogs(ctx context.Context, ledger string, pageSize int, cursor string) (LogsPage, error) {
	const op = "ListLogs"
	if err := ValidateLedgerName(ledger); err != nil {
		return LogsPage{}, notSent(op, err)
	}
	if pageSize < 0 {
		return LogsPage{}, notSent(op, fmt.Errorf("pageSize must not be negative, got %d", pageSize))
	}
	q := url.Values{}
	switch {
	case cursor != "":
		q.Set("cursor", cursor)
	case pageSize > 0:
		q.Set("pageSize", fmt.Sprint(pageSize))
	}
	resp, e := c.do(ctx, request{
		op: op, method: http.MethodGet, path: "/v2/" + url.PathEscape(ledger) + "/logs", query: q,
		limit: maxLogsResponseBytes,
	})
	if e != nil {
		return LogsPage{}, e
	}
	if resp.status != http.StatusOK {
		return LogsPage{}, resp.fail()
	}
	var body logsCursorWire
	dec := json.NewDecoder(bytes.NewReader(resp.body))
	dec.UseNumber()
	if err := dec.Decode(&body); err != nil || body.Cursor == nil {
		return LogsPage{}, resp.unexpected(fmt.Errorf("%w: not a logs cursor: %v", ErrUnexpectedResponse, err))
	}
	page := LogsPage{
		PageSize: body.Cursor.PageSize, HasMore: body.Cursor.HasMore,
		Previous: body.Cursor.Previous, Next: body.Cursor.Next,
		Data: make([]Log, 0, len(body.Cursor.Data)),
	}
	for _, w := range body.Cursor.Data {
		l, err := w.log()
		if err != nil {
			return LogsPage{}, resp.unexpected(fmt.Errorf("%w: %v", ErrUnexpectedResponse, err))
		}
		page.Data = append(page.Data, l)
	}
	return page, nil
}

// AllLogs reads every log of the ledger, newest first, following cursors.
// It is meant for tests and inspection, not for large ledgers.
func (c *Client) AllLogs(ctx context.Context, ledger string) ([]Log, error) {
	var all []Log
	seen := map[string]bool{}
	cursor := ""
	for {
		page, err := c.ListLogs(ctx, ledger, MaxLogsPageSize, cursor)
		if err != nil {
			return nil, err
		}
		all = append(all, page.Data...)
		if !page.HasMore || page.Next == "" {
			return all, nil
		}
		if seen[page.Next] {
			return nil, &Error{Op: "AllLogs", Err: fmt.Errorf("%w: cursor loop", ErrUnexpectedResponse)}
		}
		seen[page.Next] = true
		cursor = page.Next
	}
}

// Healthcheck calls GET /_healthcheck; any 2xx is healthy. It goes through
// the same transport and token as every call, so it also fails when no token
// can be had.
func (c *Client) Healthcheck(ctx context.Context) error {
	const op = "Healthcheck"
	resp, e := c.do(ctx, request{op: op, method: http.MethodGet, path: "/_healthcheck"})
	if e != nil {
		return e
	}
	if resp.status/100 != 2 {
		return resp.fail()
	}
	return nil
}

// ---- plumbing ----

type request struct {
	op, method     string
	path           string // escaped, from the root of BaseURL
	query          url.Values
	body           []byte // nil: no body
	idempotencyKey string
	elements       int   // the work in the request, for its timeout; 0 is 1
	limit          int64 // response bytes; 0 means maxResponseBytes
}

// response is a read answer; its methods build the *Error for it.
type response struct {
	op, method, url string
	status          int
	header          http.Header
	body            []byte
	apiErr          struct {
		ErrorCode    string `json:"errorCode"`
		ErrorMessage string `json:"errorMessage"`
		Details      string `json:"details"`
	}
}

func (r *response) errorCode() string { return r.apiErr.ErrorCode }

// fail is the *Error for an answer the call does not expect.
func (r *response) fail() *Error {
	e := &Error{
		Op: r.op, Method: r.method, URL: r.url, StatusCode: r.status,
		ErrorCode: r.apiErr.ErrorCode, ErrorMessage: r.apiErr.ErrorMessage, Details: r.apiErr.Details,
	}
	if e.ErrorCode == "" && e.ErrorMessage == "" && len(r.body) > 0 {
		// Not the ledger's error shape (a proxy's page, say): keep a bounded,
		// printable excerpt for the operator.
		e.ErrorMessage = excerpt(r.body, 200)
	}
	switch {
	case r.status < 400:
		e.Err = fmt.Errorf("%w: status %d", ErrUnexpectedResponse, r.status)
	case r.status < 500 && e.ErrorCode == "" && !authOrThrottle(r.status):
		// The ledger names every refusal; a bare 4xx comes from something
		// else on the way (a gateway with a wrong path, say), so it says
		// nothing about the command.
		e.Err = fmt.Errorf("%w: %d without a ledger error code", ErrUnexpectedResponse, r.status)
	}
	return e
}

func (r *response) unexpected(err error) *Error {
	e := r.fail()
	e.Err = err
	return e
}

func (c *Client) do(ctx context.Context, req request) (*response, *Error) {
	u := c.base + req.path
	if len(req.query) > 0 {
		u += "?" + req.query.Encode()
	}
	resp := &response{op: req.op, method: req.method, url: redact(u)}
	fail := func(err error) *Error {
		return &Error{Op: req.op, Method: req.method, URL: resp.url, Err: err}
	}
	if ctx.Err() != nil {
		return nil, fail(ctxError(ctx))
	}

	timeout := c.TimeoutFor(req.elements)
	rctx, cancel := context.WithTimeoutCause(ctx, timeout, ErrTimeout)
	defer cancel()
	// ended tells the caller's cancellation from our own timeouts (the
	// context's, or the transport's dial/TLS/response-header ones).
	ended := func(err error) error {
		var ne net.Error
		switch {
		case ctx.Err() != nil:
			return ctxError(ctx)
		case errors.Is(context.Cause(rctx), ErrTimeout):
			return fmt.Errorf("%w after %s", ErrTimeout, timeout)
		case errors.As(err, &ne) && ne.Timeout():
			// Not wrapped: net/http's timeout errors match
			// context.DeadlineExceeded, which is the caller's to own.
			return fmt.Errorf("%w: %v", ErrTimeout, err)
		}
		return err
	}

	var body io.Reader
	if req.body != nil {
		body = bytes.NewReader(req.body)
	}
	hreq, err := http.NewRequestWithContext(withOp(rctx, req.op), req.method, u, body)
	if err != nil {
		e := fail(err)
		e.notSent = true
		return nil, e
	}
	hreq.Header.Set("Accept", "application/json")
	hreq.Header.Set("User-Agent", userAgent)
	if req.body != nil {
		hreq.Header.Set("Content-Type", "application/json")
	}
	if req.idempotencyKey != "" {
		hreq.Header.Set(headerIdempotencyKey, req.idempotencyKey)
	}
	var tokenGen uint64
	if c.tokens != nil {
		tok, gen, err := c.tokens.token()
		if err != nil {
			return nil, fail(err)
		}
		tokenGen = gen
		tok.SetAuthHeader(hreq)
	}

	start := time.Now()
	hresp, err := c.hc.Do(hreq)
	if err != nil {
		if c.observe != nil {
			c.observe(req.op, 0, time.Since(start))
		}
		return nil, fail(ended(err))
	}
	if c.observe != nil {
		defer func() { c.observe(req.op, hresp.StatusCode, time.Since(start)) }()
	}
	defer func() {
		_, _ = io.CopyN(io.Discard, hresp.Body, drainBytes)
		_ = hresp.Body.Close()
	}()
	limit := req.limit
	if limit == 0 {
		limit = maxResponseBytes
	}
	b, err := io.ReadAll(io.LimitReader(hresp.Body, limit+1))
	if err != nil {
		return nil, fail(ended(err))
	}
	resp.status, resp.header, resp.body = hresp.StatusCode, hresp.Header, b
	if int64(len(b)) > limit {
		return nil, resp.unexpected(fmt.Errorf("%w: body larger than %d bytes", ErrUnexpectedResponse, limit))
	}
	if hresp.StatusCode >= 400 && len(b) > 0 {
		// The ledger's error shape; anything else leaves apiErr empty.
		_ = json.Unmarshal(b, &resp.apiErr)
	}
	if hresp.StatusCode == http.StatusUnauthorized && c.tokens != nil {
		c.tokens.invalidate(tokenGen)
	}
	return resp, nil
}

// authOrThrottle are the 4xx statuses that carry no ledger error code by
// design (401 comes with an empty body from the JWT middleware).
func authOrThrottle(status int) bool {
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusRequestTimeout, http.StatusTooManyRequests:
		return true
	}
	return false
}

func notSent(op string, err error) *Error {
	return &Error{Op: op, Err: err, notSent: true}
}

func validateIdempotencyKey(key string) error {
	if !utf8.ValidString(key) {
		// In a bulk the key travels in JSON, which replaces the invalid
		// bytes; as a header it travels raw: one command's attempts would
		// be two keys to the ledger, and a write could apply twice.
		return fmt.Errorf("%w: not valid UTF-8", ErrInvalidIdempotencyKey)
	}
	if utf8.RuneCountInString(key) > maxIdempotencyKeyLen {
		return fmt.Errorf("%w: longer than %d characters", ErrInvalidIdempotencyKey, maxIdempotencyKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if b := key[i]; (b < 0x20 && b != '\t') || b == 0x7f {
			return fmt.Errorf("%w: control character at byte %d", ErrInvalidIdempotencyKey, i)
		}
	}
	if key != strings.TrimSpace(key) {
		// net/http would send it trimmed, and the ledger would store another key.
		return fmt.Errorf("%w: leading or trailing white space", ErrInvalidIdempotencyKey)
	}
	return nil
}

// redact hides the password of a URL's userinfo.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<invalid URL>"
	}
	return u.Redacted()
}

func excerpt(b []byte, n int) string {
	s := strings.ToValidUTF8(string(b), "?")
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "") + "..."
	}
	return s
}
