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
	"regexp"
	"slices"
	"strings"
	"time"
)

// accountsQuery is one page of GET /v2/{ledger}/accounts, and the content of
// its cursors: offset pagination over the address column, as the real
// ledger pages accounts.
type accountsQuery struct {
	PageSize int             `json:"pageSize"`
	Offset   int             `json:"offset"`
	Desc     bool            `json:"desc,omitempty"`
	Filter   json.RawMessage `json:"filter,omitempty"`
}

// accountsCursorResponse is V2AccountsCursorResponse.
type accountsCursorResponse struct {
	Cursor accountsCursor `json:"cursor"`
}

type accountsCursor struct {
	PageSize int           `json:"pageSize"`
	HasMore  bool          `json:"hasMore"`
	Previous string        `json:"previous,omitempty"`
	Next     string        `json:"next,omitempty"`
	Data     []accountView `json:"data"`
}

// listAccountsHandler is GET /v2/{ledger}/accounts: the accounts the filter
// in the body (or the "query" parameter, which the real ledger reads first)
// selects, sorted by address, ascending unless sort=address:desc. A cursor
// carries the whole query; pageSize may still change the page's size.
// expand is accepted and has nothing to add (no volumes here); pit is
// parsed, then ignored, as for logs.
func (l *Ledger) listAccountsHandler(w http.ResponseWriter, r *http.Request, lg ledgerRow) error {
	qs := r.URL.Query()
	var q accountsQuery
	if c := qs.Get("cursor"); c != "" {
		var err error
		if q, err = decodeAccountsCursor(c); err != nil {
			return validationError("invalid 'cursor' query param")
		}
	} else {
		q.PageSize = DefaultPageSize
		if pit := qs.Get("pit"); pit != "" {
			if _, err := time.Parse(time.RFC3339Nano, pit); err != nil {
				return validationError("invalid 'pit' query param: %s", err)
			}
		}
		switch s := qs.Get("sort"); s {
		case "", "address", "address:asc":
		case "address:desc":
			q.Desc = true
		default:
			return validationError("unsupported sort %q: only address is implemented", s)
		}
		var err error
		if q.Filter, err = listFilter(r); err != nil {
			return err
		}
	}
	if err := pageSize(qs, &q.PageSize); err != nil {
		return err
	}
	f, err := compileFilter(q.Filter)
	if err != nil {
		return validationError("%s", err)
	}

	rows, hasMore, err := l.listAccounts(r.Context(), lg.ID, f, q)
	if err != nil {
		return l.internalError(err)
	}
	views := make([]accountView, 0, len(rows))
	expand := qs["expand"]
	for _, a := range rows {
		v := accountView{
			Address: a.Address, Metadata: nonNil(a.Metadata),
			FirstUsage: formatTime(a.FirstUsage), InsertionDate: formatTime(a.InsertionDate), UpdatedAt: formatTime(a.UpdatedAt),
		}
		if err := l.expandAccount(r.Context(), lg.ID, &v, expand); err != nil {
			return l.internalError(err)
		}
		views = append(views, v)
	}
	cur := accountsCursor{PageSize: q.PageSize, HasMore: hasMore, Data: views}
	if hasMore {
		next := q
		next.Offset += q.PageSize
		cur.Next = encodeAccountsCursor(next)
	}
	if q.Offset > 0 {
		prev := q
		prev.Offset = max(0, q.Offset-q.PageSize)
		cur.Previous = encodeAccountsCursor(prev)
	}
	writeJSON(w, http.StatusOK, accountsCursorResponse{Cursor: cur})
	return nil
}

func encodeAccountsCursor(q accountsQuery) string {
	b, _ := json.Marshal(q)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeAccountsCursor(s string) (accountsQuery, error) {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return accountsQuery{}, err
	}
	var q accountsQuery
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&q); err != nil {
		return accountsQuery{}, err
	}
	if q.PageSize < 1 || q.PageSize > MaxPageSize || q.Offset < 0 {
		return accountsQuery{}, errors.New("cursor out of range")
	}
	return q, nil
}

// listAccounts returns the page of q among the accounts f selects, and
// whether more follow. A filter bounded to a set of addresses reads those
// rows by key; any other scans the ledger's accounts.
func (l *Ledger) listAccounts(ctx context.Context, ledgerID int64, f accountFilter, q accountsQuery) ([]accountRow, bool, error) {
	const cols = `SELECT address, metadata, first_usage, insertion_date, updated_at FROM accounts WHERE ledger_id = ?`
	var rows *sql.Rows
	var err error
	if f.addresses != nil {
		if len(f.addresses) == 0 {
			return nil, false, nil
		}
		args := make([]any, 0, len(f.addresses)+1)
		args = append(args, ledgerID)
		for _, a := range f.addresses {
			args = append(args, a)
		}
		rows, err = l.r.QueryContext(ctx, cols+` AND address IN (?`+strings.Repeat(`, ?`, len(f.addresses)-1)+`)`, args...)
	} else {
		rows, err = l.r.QueryContext(ctx, cols+` ORDER BY address`, ledgerID)
	}
	if err != nil {
		return nil, false, fmt.Errorf("list accounts: %w", err)
	}
	defer rows.Close()

	var all []accountRow
	for rows.Next() {
		var a accountRow
		var md string
		var first, inserted, updated int64
		if err := rows.Scan(&a.Address, &md, &first, &inserted, &updated); err != nil {
			return nil, false, fmt.Errorf("scan account: %w", err)
		}
		if err := json.Unmarshal([]byte(md), &a.Metadata); err != nil {
			return nil, false, fmt.Errorf("decode account metadata: %w", err)
		}
		a.FirstUsage, a.InsertionDate, a.UpdatedAt = time.UnixMicro(first).UTC(), time.UnixMicro(inserted).UTC(), time.UnixMicro(updated).UTC()
		if f.match(a) {
			all = append(all, a)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("list accounts: %w", err)
	}
	slices.SortFunc(all, func(a, b accountRow) int { return strings.Compare(a.Address, b.Address) })
	if q.Desc {
		slices.Reverse(all)
	}
	if q.Offset >= len(all) {
		return nil, false, nil
	}
	all = all[q.Offset:]
	if len(all) > q.PageSize {
		return all[:q.PageSize], true, nil
	}
	return all, false, nil
}

// accountFilter is a compiled filter of the ledger's query language.
type accountFilter struct {
	match func(accountRow) bool
	// addresses, when not nil, holds every address the filter can select.
	addresses []string
}

var metadataFieldRe = regexp.MustCompile(`^metadata\[(.+)]$`)

// compileFilter compiles the subset of the real ledger's filters on
// accounts that this server implements: $and, $or and $not; $match on
// address (a full address, or a pattern with empty segments or a trailing
// "...", as the real one reads it); $in on address (full addresses only);
// $match on metadata[key]; $exists on metadata. Any other filter the real
// ledger knows (balances, dates, $like, $lt, ...) is refused with 400
// VALIDATION, as is anything malformed.
func compileFilter(raw json.RawMessage) (accountFilter, error) {
	if len(raw) == 0 {
		return accountFilter{match: func(accountRow) bool { return true }}, nil
	}
	var node map[string]json.RawMessage
	if err := json.Unmarshal(raw, &node); err != nil {
		return accountFilter{}, fmt.Errorf("invalid query: %s", err)
	}
	return compileNode(node)
}

func compileNode(node map[string]json.RawMessage) (accountFilter, error) {
	if len(node) != 1 {
		return accountFilter{}, fmt.Errorf("invalid query: want one operator per object, got %d", len(node))
	}
	for op, raw := range node {
		switch op {
		case "$and", "$or":
			var items []map[string]json.RawMessage
			if err := json.Unmarshal(raw, &items); err != nil {
				return accountFilter{}, fmt.Errorf("invalid query: %s expects an array of filters", op)
			}
			return compileList(op == "$and", items)
		case "$not":
			var item map[string]json.RawMessage
			if err := json.Unmarshal(raw, &item); err != nil {
				return accountFilter{}, fmt.Errorf("invalid query: $not expects a filter")
			}
			inner, err := compileNode(item)
			if err != nil {
				return accountFilter{}, err
			}
			return accountFilter{match: func(a accountRow) bool { return !inner.match(a) }}, nil
		default:
			var leaf map[string]json.RawMessage
			if err := json.Unmarshal(raw, &leaf); err != nil || len(leaf) != 1 {
				return accountFilter{}, fmt.Errorf("invalid query: %s expects one field", op)
			}
			for field, value := range leaf {
				return compileLeaf(op, field, value)
			}
		}
	}
	panic("unreachable")
}

func compileList(and bool, items []map[string]json.RawMessage) (accountFilter, error) {
	subs := make([]accountFilter, 0, len(items))
	for _, it := range items {
		f, err := compileNode(it)
		if err != nil {
			return accountFilter{}, err
		}
		subs = append(subs, f)
	}
	out := accountFilter{match: func(a accountRow) bool {
		for _, f := range subs {
			if f.match(a) != and {
				return !and
			}
		}
		return and
	}}
	// Bound the rows to read: an $and by any bounded part, an $or only
	// when every part is bounded.
	for _, f := range subs {
		switch {
		case f.addresses == nil && !and:
			return accountFilter{match: out.match}, nil
		case f.addresses == nil:
		case out.addresses == nil:
			out.addresses = f.addresses
		case and:
			out.addresses = slices.DeleteFunc(slices.Clone(out.addresses), func(a string) bool { return !slices.Contains(f.addresses, a) })
		default:
			out.addresses = append(slices.Clone(out.addresses), f.addresses...)
		}
	}
	if out.addresses != nil {
		slices.Sort(out.addresses)
		out.addresses = slices.Compact(out.addresses)
	}
	return out, nil
}

func compileLeaf(op, field string, value json.RawMessage) (accountFilter, error) {
	switch {
	case field == "address" && op == "$match":
		var addr string
		if err := json.Unmarshal(value, &addr); err != nil {
			return accountFilter{}, errors.New("invalid query: $match on address expects a string")
		}
		if !isPartialAddress(addr) {
			return accountFilter{match: func(a accountRow) bool { return a.Address == addr }, addresses: []string{addr}}, nil
		}
		return accountFilter{match: func(a accountRow) bool { return matchesPattern(a.Address, addr) }}, nil
	case field == "address" && op == "$in":
		var addrs []string
		if err := json.Unmarshal(value, &addrs); err != nil {
			return accountFilter{}, errors.New("invalid query: $in on address expects an array of strings")
		}
		for _, a := range addrs {
			if isPartialAddress(a) {
				return accountFilter{}, errors.New("IN operator only supports full addresses")
			}
		}
		set := make(map[string]bool, len(addrs))
		for _, a := range addrs {
			set[a] = true
		}
		return accountFilter{match: func(a accountRow) bool { return set[a.Address] }, addresses: append([]string{}, addrs...)}, nil
	case op == "$match" && metadataFieldRe.MatchString(field):
		key := metadataFieldRe.FindStringSubmatch(field)[1]
		var want string
		if err := json.Unmarshal(value, &want); err != nil {
			return accountFilter{}, fmt.Errorf("invalid query: $match on %s expects a string", field)
		}
		return accountFilter{match: func(a accountRow) bool { v, ok := a.Metadata[key]; return ok && v == want }}, nil
	case op == "$exists" && field == "metadata":
		var key string
		if err := json.Unmarshal(value, &key); err != nil {
			return accountFilter{}, errors.New("invalid query: $exists on metadata expects a key")
		}
		return accountFilter{match: func(a accountRow) bool { _, ok := a.Metadata[key]; return ok }}, nil
	}
	return accountFilter{}, fmt.Errorf("filter %s on %s is not implemented by the embedded ledger", op, field)
}

// isPartialAddress is the real ledger's: an empty segment, or a last
// segment "...", makes an address a pattern.
func isPartialAddress(address string) bool {
	segs := strings.Split(address, ":")
	for i, s := range segs {
		if s == "" || (s == "..." && i == len(segs)-1) {
			return true
		}
	}
	return false
}

// matchesPattern is the real ledger's filterAccountAddress for a pattern:
// an empty segment matches any segment; without a trailing "..." the number
// of segments must be the same.
func matchesPattern(address, pattern string) bool {
	as, ps := strings.Split(address, ":"), strings.Split(pattern, ":")
	open := ps[len(ps)-1] == "..."
	if !open && len(as) != len(ps) {
		return false
	}
	for i, p := range ps {
		if p == "" || p == "..." {
			continue
		}
		if i >= len(as) || as[i] != p {
			return false
		}
	}
	return true
}
