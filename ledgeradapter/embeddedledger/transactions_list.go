package embeddedledger

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// txQuery is one page of GET /v2/{ledger}/transactions and the content of
// its cursors: transactions newest first, from ids up to MaxID (0: from
// the newest).
type txQuery struct {
	PageSize int             `json:"pageSize"`
	MaxID    int64           `json:"maxID,omitempty"`
	Filter   json.RawMessage `json:"filter,omitempty"`
	Expand   []string        `json:"expand,omitempty"`
}

type txCursorResponse struct {
	Cursor txCursor `json:"cursor"`
}

type txCursor struct {
	PageSize int               `json:"pageSize"`
	HasMore  bool              `json:"hasMore"`
	Previous string            `json:"previous,omitempty"`
	Next     string            `json:"next,omitempty"`
	Data     []transactionView `json:"data"`
}

const qTransactionsUpTo = `SELECT data FROM transactions WHERE ledger_id = ? AND id <= ? ORDER BY id DESC`

// qTransactionsOfAccount lists the transactions that move an account, in
// a role: %s is "", "AND a.source = 1" or "AND a.destination = 1".
const qTransactionsOfAccount = `SELECT t.data FROM transaction_accounts a JOIN transactions t ON t.ledger_id = a.ledger_id AND t.id = a.id
WHERE a.ledger_id = ? AND a.address = ? AND a.id <= ? %s ORDER BY a.id DESC`

// accountHint is a filter's condition that every listed transaction moves
// one account (a $match on account, source or destination with a full
// address, at the top or in a top-level $and): the list then reads that
// account's transactions only, and still applies the whole filter.
type accountHint struct {
	address string
	field   string // account, source or destination
}

func accountHintOf(raw json.RawMessage) (accountHint, bool) {
	var node map[string]json.RawMessage
	if len(raw) == 0 || json.Unmarshal(raw, &node) != nil || len(node) != 1 {
		return accountHint{}, false
	}
	if items, ok := node["$and"]; ok {
		var list []json.RawMessage
		if json.Unmarshal(items, &list) != nil {
			return accountHint{}, false
		}
		for _, it := range list {
			if h, ok := accountHintOf(it); ok {
				return h, true
			}
		}
		return accountHint{}, false
	}
	var leaf map[string]json.RawMessage
	if json.Unmarshal(node["$match"], &leaf) != nil || len(leaf) != 1 {
		return accountHint{}, false
	}
	for field, value := range leaf {
		var address string
		if (field == "account" || field == "source" || field == "destination") &&
			json.Unmarshal(value, &address) == nil && !isPartialAddress(address) {
			return accountHint{address: address, field: field}, true
		}
	}
	return accountHint{}, false
}

// listTransactionsHandler is GET /v2/{ledger}/transactions: the
// transactions the filter selects (in the "query" parameter, which the real
// ledger reads first, or the body), newest first. It reads the ledger's
// transactions from the newest down until the page is full, so it suits
// the embedded ledger's sizes, not large ledgers.
func (l *Ledger) listTransactionsHandler(w http.ResponseWriter, r *http.Request, lg ledgerRow) error {
	qs := r.URL.Query()
	var q txQuery
	if c := qs.Get("cursor"); c != "" {
		b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(c, "="))
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err != nil || dec.Decode(&q) != nil || q.PageSize < 1 || q.PageSize > MaxPageSize {
			return validationError("invalid 'cursor' query param")
		}
	} else {
		q.PageSize = DefaultPageSize
		q.Expand = qs["expand"]
		if s := qs.Get("sort"); s != "" && s != "id" && s != "id:desc" {
			return validationError("unsupported sort %q: only id:desc is implemented", s)
		}
		var err error
		if q.Filter, err = listFilter(r); err != nil {
			return err
		}
	}
	if err := pageSize(qs, &q.PageSize); err != nil {
		return err
	}
	match, err := compileTxFilter(q.Filter)
	if err != nil {
		return validationError("%s", err)
	}
	hint, _ := accountHintOf(q.Filter)
	page, hasMore, err := l.listTransactions(r.Context(), lg.ID, q, match, hint)
	if err != nil {
		return l.internalError(err)
	}
	cur := txCursor{PageSize: q.PageSize, HasMore: hasMore, Data: page}
	if hasMore {
		next := q
		next.MaxID = page[len(page)-1].ID - 1
		b, _ := json.Marshal(next)
		cur.Next = base64.RawURLEncoding.EncodeToString(b)
	}
	writeJSON(w, http.StatusOK, txCursorResponse{Cursor: cur})
	return nil
}

func (l *Ledger) listTransactions(ctx context.Context, ledgerID int64, q txQuery, match func(*transactionView) bool, hint accountHint) ([]transactionView, bool, error) {
	maxID := q.MaxID
	if maxID == 0 {
		maxID = 1<<63 - 1
	}
	var rows *sql.Rows
	var err error
	switch hint.field {
	case "":
		rows, err = l.r.QueryContext(ctx, qTransactionsUpTo, ledgerID, maxID)
	case "account":
		rows, err = l.r.QueryContext(ctx, fmt.Sprintf(qTransactionsOfAccount, ""), ledgerID, hint.address, maxID)
	default: // source or destination: a column of that name
		rows, err = l.r.QueryContext(ctx, fmt.Sprintf(qTransactionsOfAccount, "AND a."+hint.field+" = 1"), ledgerID, hint.address, maxID)
	}
	if err != nil {
		return nil, false, fmt.Errorf("list transactions: %w", err)
	}
	defer rows.Close()
	page := []transactionView{}
	for rows.Next() {
		var raw string
		if err := rows.Scan(&raw); err != nil {
			return nil, false, err
		}
		var tx transactionView
		if err := json.Unmarshal([]byte(raw), &tx); err != nil {
			return nil, false, fmt.Errorf("decode transaction: %w", err)
		}
		if !match(&tx) {
			continue
		}
		if len(page) == q.PageSize {
			return page, true, nil
		}
		expandTransaction(&tx, q.Expand)
		page = append(page, tx)
	}
	return page, false, rows.Err()
}

// compileTxFilter compiles the filters on transactions this server
// implements: $and, $or and $not; $match on account (either side of a
// posting), source and destination (full addresses or patterns, as for
// accounts), reference and id, and on metadata[key]; $exists on metadata.
// Others are refused with 400 VALIDATION.
func compileTxFilter(raw json.RawMessage) (func(*transactionView) bool, error) {
	if len(raw) == 0 {
		return func(*transactionView) bool { return true }, nil
	}
	var node map[string]json.RawMessage
	if err := json.Unmarshal(raw, &node); err != nil {
		return nil, fmt.Errorf("invalid query: %s", err)
	}
	return compileTxNode(node)
}

func compileTxNode(node map[string]json.RawMessage) (func(*transactionView) bool, error) {
	if len(node) != 1 {
		return nil, fmt.Errorf("invalid query: want one operator per object, got %d", len(node))
	}
	for op, raw := range node {
		switch op {
		case "$and", "$or":
			var items []map[string]json.RawMessage
			if err := json.Unmarshal(raw, &items); err != nil {
				return nil, fmt.Errorf("invalid query: %s expects an array of filters", op)
			}
			subs := make([]func(*transactionView) bool, len(items))
			for i, it := range items {
				f, err := compileTxNode(it)
				if err != nil {
					return nil, err
				}
				subs[i] = f
			}
			and := op == "$and"
			return func(tx *transactionView) bool {
				for _, f := range subs {
					if f(tx) != and {
						return !and
					}
				}
				return and
			}, nil
		case "$not":
			var item map[string]json.RawMessage
			if err := json.Unmarshal(raw, &item); err != nil {
				return nil, errors.New("invalid query: $not expects a filter")
			}
			inner, err := compileTxNode(item)
			if err != nil {
				return nil, err
			}
			return func(tx *transactionView) bool { return !inner(tx) }, nil
		default:
			var leaf map[string]json.RawMessage
			if err := json.Unmarshal(raw, &leaf); err != nil || len(leaf) != 1 {
				return nil, fmt.Errorf("invalid query: %s expects one field", op)
			}
			for field, value := range leaf {
				return compileTxLeaf(op, field, value)
			}
		}
	}
	panic("unreachable")
}

func compileTxLeaf(op, field string, value json.RawMessage) (func(*transactionView) bool, error) {
	var want string
	switch {
	case op == "$exists" && field == "metadata":
		if err := json.Unmarshal(value, &want); err != nil {
			return nil, errors.New("invalid query: $exists on metadata expects a key")
		}
		return func(tx *transactionView) bool { _, ok := tx.Metadata[want]; return ok }, nil
	case op != "$match":
	case field == "id":
		var id int64
		if err := json.Unmarshal(value, &id); err != nil {
			return nil, errors.New("invalid query: $match on id expects a number")
		}
		return func(tx *transactionView) bool { return tx.ID == id }, nil
	default:
		if err := json.Unmarshal(value, &want); err != nil {
			return nil, fmt.Errorf("invalid query: $match on %s expects a string", field)
		}
		address := func(a string) bool {
			if isPartialAddress(want) {
				return matchesPattern(a, want)
			}
			return a == want
		}
		switch {
		case field == "account", field == "source", field == "destination":
			return func(tx *transactionView) bool {
				for _, p := range tx.Postings {
					if field != "destination" && address(p.Source) || field != "source" && address(p.Destination) {
						return true
					}
				}
				return false
			}, nil
		case field == "reference":
			return func(tx *transactionView) bool { return tx.Reference == want }, nil
		case metadataFieldRe.MatchString(field):
			key := metadataFieldRe.FindStringSubmatch(field)[1]
			return func(tx *transactionView) bool { v, ok := tx.Metadata[key]; return ok && v == want }, nil
		}
	}
	return nil, fmt.Errorf("filter %s on %s is not implemented by the embedded ledger", op, field)
}

// listFilter is a list's filter: the "query" parameter, which the real
// ledger reads first, or else the body; nil for none, or an empty object
// (which the official description has clients send as the body).
func listFilter(r *http.Request) (json.RawMessage, error) {
	raw := []byte(r.URL.Query().Get("query"))
	if len(raw) == 0 {
		var err error
		if raw, err = readBody(r); err != nil {
			return nil, err
		}
	}
	var node map[string]json.RawMessage
	if t := bytes.TrimSpace(raw); len(t) == 0 || (json.Unmarshal(t, &node) == nil && len(node) == 0) {
		return nil, nil
	}
	return json.RawMessage(raw), nil
}

// pageSize applies a list's pageSize parameter to size: 0 keeps it, more
// than MaxPageSize is MaxPageSize.
func pageSize(qs url.Values, size *int) error {
	v := qs.Get("pageSize")
	if v == "" {
		return nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return validationError("invalid 'pageSize' query param")
	}
	if n > 0 {
		*size = int(min(n, MaxPageSize))
	}
	return nil
}
