package ledgeradapter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

const (
	// MaxListAddresses is how many addresses one ListAccounts request asks
	// for: the real server's MAX_PAGE_SIZE default, so that one page holds
	// every account of the request.
	MaxListAddresses = 100
	// MaxBulkSize is the real server's BULK_MAX_SIZE default: a larger bulk
	// is refused whole with 413 BULK_SIZE_EXCEEDED.
	MaxBulkSize = 100

	// maxListResponseBytes bounds a page of up to MaxListAddresses accounts
	// (each under 64 KiB of metadata, CONTRACT §5).
	maxListResponseBytes = 16 << 20

	bulkActionAddMetadata = "ADD_METADATA"
	bulkResultError       = "ERROR"
	targetTypeAccount     = "ACCOUNT"
)

// BulkAddMetadata is one ADD_METADATA element of a bulk: the same write as
// AddAccountMetadata(ledger, Address, Metadata, IdempotencyKey).
type BulkAddMetadata struct {
	Address        string
	Metadata       map[string]string
	IdempotencyKey string
}

// BulkResult is what became of one element of a bulk. Err is nil when the
// ledger applied the write or answered it from the log of its idempotency
// key; otherwise it is an *Error classified like the same single call's.
type BulkResult struct {
	// LogID is the id of the element's log (of the stored log on an
	// idempotency hit); 0 on failure.
	LogID uint64
	Err   error
}

// ListAccounts reads the accounts at addresses (GET /v2/{ledger}/accounts
// with the filter {"$in": {"address": [...]}} and expand=volumes) and
// returns those that exist, by address; an address missing from the map is
// a never-touched account, as GetAccount's 404 NOT_FOUND. It sends one
// request per MaxListAddresses distinct addresses, each asking for a page
// that holds them all.
//
// $in on address needs a ledger v2.4.0 or later (v2.2 and v2.3 answer it
// with a 500). It matches full addresses only, never patterns, and every
// address is validated before anything is sent. A server whose page size
// is capped below the request's (MAX_PAGE_SIZE under 100) answers hasMore:
// the addresses not yet returned are then asked for again in requests that
// fit its page, rather than by following its cursor, which pages by offset
// and would skip an account created between two pages.
func (c *Client) ListAccounts(ctx context.Context, ledger string, addresses []string) (map[string]Account, error) {
	const op = "ListAccounts"
	errs := []error{ValidateLedgerName(ledger)}
	for _, a := range addresses {
		errs = append(errs, ValidateAddress(a))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, notSent(op, err)
	}
	want := make([]string, 0, len(addresses))
	seen := make(map[string]bool, len(addresses))
	for _, a := range addresses {
		if !seen[a] {
			seen[a] = true
			want = append(want, a)
		}
	}
	found := make(map[string]Account, len(want))
	for len(want) > 0 {
		n := min(len(want), c.listPageSize())
		chunk := want[:n]
		page, hasMore, e := c.listAccountsPage(ctx, op, ledger, chunk)
		if e != nil {
			return nil, e
		}
		for _, a := range page {
			if seen[a.Address] {
				found[a.Address] = a
			}
		}
		if !hasMore {
			want = want[n:]
			continue
		}
		// The server's page is smaller than asked: learn its size and ask
		// again for what this page did not return.
		if len(page) == 0 || len(page) >= n {
			return nil, &Error{Op: op, Err: fmt.Errorf("%w: hasMore with %d of %d accounts", ErrUnexpectedResponse, len(page), n)}
		}
		c.listCap.Store(int64(len(page)))
		rest := want[:0:0]
		for _, a := range chunk {
			if _, ok := found[a]; !ok {
				rest = append(rest, a)
			}
		}
		want = append(rest, want[n:]...)
	}
	return found, nil
}

// listPageSize is how many addresses one request may ask for.
func (c *Client) listPageSize() int {
	if n := c.listCap.Load(); n > 0 {
		return int(n)
	}
	return MaxListAddresses
}

func (c *Client) listAccountsPage(ctx context.Context, op, ledger string, addresses []string) ([]Account, bool, *Error) {
	filter, err := json.Marshal(map[string]any{"$in": map[string]any{"address": addresses}})
	if err != nil {
		return nil, false, notSent(op, err)
	}
	resp, e := c.do(ctx, request{
		op: op, method: http.MethodGet, path: "/v2/" + url.PathEscape(ledger) + "/accounts",
		query: url.Values{"pageSize": {strconv.Itoa(len(addresses))}, "expand": {"volumes"}},
		body:  filter, limit: maxListResponseBytes, elements: len(addresses),
	})
	if e != nil {
		return nil, false, e
	}
	if resp.status != http.StatusOK {
		return nil, false, resp.fail()
	}
	var body struct {
		Cursor *struct {
			HasMore bool          `json:"hasMore"`
			Data    []accountWire `json:"data"`
		} `json:"cursor"`
	}
	if err := json.Unmarshal(resp.body, &body); err != nil || body.Cursor == nil {
		return nil, false, resp.unexpected(fmt.Errorf("%w: not an accounts cursor: %v", ErrUnexpectedResponse, err))
	}
	out := make([]Account, 0, len(body.Cursor.Data))
	for _, w := range body.Cursor.Data {
		out = append(out, w.account())
	}
	return out, body.Cursor.HasMore, nil
}

// Bulk sends account-metadata writes as ADD_METADATA elements of
// POST /v2/{ledger}/_bulk?continueOnFailure=true, MaxBulkSize elements per
// request, and returns one result per element, in order. An element is the
// same write as AddAccountMetadata: its own idempotency key ("ik"), hashed
// by the ledger with the same input, in the same key space as the single
// endpoints. The error returned is for requests as a whole (the network,
// a 5xx, 404 LEDGER_NOT_FOUND, 413 BULK_SIZE_EXCEEDED, ...); nil means that
// each element's fate is in its result.
//
// Choices, from the ledger's code (internal/api/bulking at 25f8708 and
// v2.4.12):
//
//   - atomic is not set: the real ledger reports the elements before a
//     failed one as applied although an atomic bulk rolls them back;
//   - parallel is set unless Config.SequentialBulk: the ledger then runs up
//     to its --bulk-parallel (10) elements at once and answers their
//     results in the order they finished, without saying which is which
//     (v2.4.12 sorts them by an element id it never sets). When every
//     element succeeded that does not matter; when some failed, those
//     whose error names their idempotency key get it, and the others, whose
//     fate is unknown, are sent again at once in a bulk without parallel,
//     whose results are in order: their keys make that safe, the ones that
//     had been applied are answered from their keys' logs. LogID is 0 for
//     the elements of a parallel bulk. With SequentialBulk, results are
//     matched to elements by position;
//   - an element that fails, also an IK reused with another input, gets an
//     *Error whose ErrorCode and ErrorMessage are the element's errorCode
//     and errorDescription and whose StatusCode is the status that code has
//     on the single endpoints (VALIDATION 400, NOT_FOUND 404, INTERNAL 500,
//     ...), so that it is retryable or not, and matches the sentinels, as
//     the same single call's would. Ledgers before v2.4.12 name every
//     element error INTERNAL; one whose description is the idempotency-hash
//     mismatch is read as the VALIDATION it is on the single endpoint;
//   - the bulk answer has no Idempotency-Hit: a write that was already in
//     the ledger under its key is reported applied, like a new one.
//
// An element whose address or key fails validation is not sent; its result
// holds the same error AddAccountMetadata returns for it.
func (c *Client) Bulk(ctx context.Context, ledger string, elems []BulkAddMetadata) ([]BulkResult, error) {
	const op = "Bulk"
	if err := ValidateLedgerName(ledger); err != nil {
		return nil, notSent(op, err)
	}
	results := make([]BulkResult, len(elems))
	var send []int // indexes of elements that go on the wire
	for i, el := range elems {
		if err := errors.Join(ValidateAddress(el.Address), validateIdempotencyKey(el.IdempotencyKey)); err != nil {
			results[i].Err = notSent(op, err)
			continue
		}
		send = append(send, i)
	}
	for chunk := range slices.Chunk(send, MaxBulkSize) {
		bulk := c.bulk
		if c.parallelBulk && len(chunk) > 1 {
			bulk = c.parallelBulkOnce
		}
		if e := bulk(ctx, op, ledger, elems, chunk, results); e != nil {
			return nil, e
		}
	}
	return results, nil
}

// bulkElement is V2BulkElementAddMetadata.
type bulkElement struct {
	Action string          `json:"action"`
	IK     string          `json:"ik,omitempty"`
	Data   bulkElementData `json:"data"`
}

type bulkElementData struct {
	TargetType string            `json:"targetType"`
	TargetID   string            `json:"targetId"`
	Metadata   map[string]string `json:"metadata"`
}

// bulkResultWire is V2BulkElementResult.
type bulkResultWire struct {
	ResponseType     string `json:"responseType"`
	LogID            uint64 `json:"logID"`
	ErrorCode        string `json:"errorCode"`
	ErrorDescription string `json:"errorDescription"`
	ErrorDetails     string `json:"errorDetails"`
}

func (c *Client) bulk(ctx context.Context, op, ledger string, elems []BulkAddMetadata, idx []int, results []BulkResult) *Error {
	resp, data, e := c.sendBulk(ctx, op, ledger, elems, idx, false)
	if e != nil {
		return e
	}
	for j, r := range data {
		i := idx[j]
		switch r.ResponseType {
		case bulkActionAddMetadata:
			results[i] = BulkResult{LogID: r.LogID}
		case bulkResultError:
			results[i] = BulkResult{Err: resp.elementError(j, r)}
		default:
			return resp.unexpected(fmt.Errorf("%w: result %d is %q", ErrUnexpectedResponse, j, r.ResponseType))
		}
	}
	return nil
}

// parallelBulkOnce sends the elements at idx in one parallel bulk (see
// Bulk).
func (c *Client) parallelBulkOnce(ctx context.Context, op, ledger string, elems []BulkAddMetadata, idx []int, results []BulkResult) *Error {
	resp, data, e := c.sendBulk(ctx, op, ledger, elems, idx, true)
	if e != nil {
		return e
	}
	// A key names its element when no other element of the bulk has it.
	byKey := make(map[string]int, len(idx))
	for _, i := range idx {
		if k := elems[i].IdempotencyKey; k != "" {
			if _, dup := byKey[k]; dup {
				byKey[k] = -1
			} else {
				byKey[k] = i
			}
		}
	}
	known := make(map[int]bool)
	unknown := 0 // failures that name no element
	for j, r := range data {
		switch r.ResponseType {
		case bulkActionAddMetadata:
		case bulkResultError:
			if i := elementOfError(r.ErrorDescription, byKey); i >= 0 && !known[i] {
				known[i] = true
				results[i] = BulkResult{Err: resp.elementError(slices.Index(idx, i), r)}
				continue
			}
			unknown++
		default:
			return resp.unexpected(fmt.Errorf("%w: result %d is %q", ErrUnexpectedResponse, j, r.ResponseType))
		}
	}
	rest := make([]int, 0, len(idx)-len(known))
	for _, i := range idx {
		if !known[i] {
			rest = append(rest, i)
		}
	}
	if unknown == 0 {
		for _, i := range rest {
			results[i] = BulkResult{}
		}
		return nil
	}
	// Some failed, which is not known: ask again, in order.
	return c.bulk(ctx, op, ledger, elems, rest, results)
}

// elementOfError is the element an element's error description names by
// its key ("invalid idempotency hash when using idempotency key 'k', has
// computed ..."), or -1. A key may hold quotes itself, so each candidate of
// byKey (-1: a key that names no element) is matched whole, with the text
// on both sides of it; a description that matches none, or more than one,
// names no element.
func elementOfError(desc string, byKey map[string]int) int {
	const before, after = "idempotency key '", "', has computed '"
	if !strings.Contains(desc, before) {
		return -1
	}
	found := -1
	for k, i := range byKey {
		if i >= 0 && strings.Contains(desc, before+k+after) {
			if found >= 0 {
				return -1
			}
			found = i
		}
	}
	return found
}

// sendBulk sends the elements at idx in one request and returns its
// results, one per element.
func (c *Client) sendBulk(ctx context.Context, op, ledger string, elems []BulkAddMetadata, idx []int, parallel bool) (*response, []bulkResultWire, *Error) {
	wire := make([]bulkElement, len(idx))
	for j, i := range idx {
		md := elems[i].Metadata
		if md == nil {
			md = map[string]string{} // as AddAccountMetadata: nil and {} hash alike
		}
		wire[j] = bulkElement{
			Action: bulkActionAddMetadata, IK: elems[i].IdempotencyKey,
			Data: bulkElementData{TargetType: targetTypeAccount, TargetID: elems[i].Address, Metadata: md},
		}
	}
	body, err := json.Marshal(wire)
	if err != nil {
		return nil, nil, notSent(op, err)
	}
	query := url.Values{"continueOnFailure": {"true"}}
	if parallel {
		query.Set("parallel", "true")
	}
	resp, e := c.do(ctx, request{
		op: op, method: http.MethodPost, path: "/v2/" + url.PathEscape(ledger) + "/_bulk",
		query: query, body: body, elements: len(idx), limit: int64(max(1, len(idx))) * maxBulkElementResponseBytes,
	})
	if e != nil {
		return nil, nil, e
	}
	// 200: every element applied; 400 with data: some failed. Anything
	// else, a 400 without data included (a body the ledger could not read),
	// is about the request.
	var out struct {
		Data *[]bulkResultWire `json:"data"`
	}
	if resp.status != http.StatusOK && resp.status != http.StatusBadRequest {
		return nil, nil, resp.fail()
	}
	if err := json.Unmarshal(resp.body, &out); err != nil || out.Data == nil {
		if resp.status == http.StatusBadRequest {
			return nil, nil, resp.fail()
		}
		return nil, nil, resp.unexpected(fmt.Errorf("%w: not a bulk response: %v", ErrUnexpectedResponse, err))
	}
	if len(*out.Data) != len(idx) {
		return nil, nil, resp.unexpected(fmt.Errorf("%w: %d results for %d elements", ErrUnexpectedResponse, len(*out.Data), len(idx)))
	}
	return resp, *out.Data, nil
}

// elementError is the *Error of a failed bulk element.
func (r *response) elementError(j int, w bulkResultWire) *Error {
	code := w.ErrorCode
	if code == CodeInternal && strings.Contains(w.ErrorDescription, idempotencyHashMessage) {
		code = CodeValidation // a ledger before v2.4.12 maps every element error to INTERNAL
	}
	return &Error{
		Op: r.op, Method: r.method, URL: r.url, Element: j + 1,
		StatusCode: statusOfCode(code), ErrorCode: code,
		ErrorMessage: w.ErrorDescription, Details: w.ErrorDetails,
	}
}

// statusOfCode is the status an error code has on the single endpoints
// (CONTRACT §2).
func statusOfCode(code string) int {
	switch code {
	case CodeNotFound, CodeLedgerNotFound:
		return http.StatusNotFound
	case "CONFLICT":
		return http.StatusConflict
	case CodeInternal, "":
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}
