package embeddedledger

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Log types, as the real ledger names them on the wire.
const (
	logTypeSetMetadata    = "SET_METADATA"
	logTypeDeleteMetadata = "DELETE_METADATA"
	targetTypeAccount     = "ACCOUNT"
)

type ledgerRow struct {
	ID       int64
	Name     string
	Bucket   string
	Metadata map[string]string
	Features map[string]string
	AddedAt  time.Time
}

type accountRow struct {
	Address       string
	Metadata      map[string]string
	FirstUsage    time.Time
	InsertionDate time.Time
	UpdatedAt     time.Time
}

type logRow struct {
	ID             int64
	Type           string
	Data           json.RawMessage
	Date           time.Time
	IdempotencyKey string
	IdempotencyHsh string
	Hash           []byte
}

var errLedgerExists = errors.New("ledger already exists")

// Statements of the hot paths, prepared once at Open: the write ones on the
// write connection, the read ones on the read pool.
const (
	qIdempotencyHash = `SELECT id, idempotency_hash FROM logs WHERE ledger_id = ? AND idempotency_key = ?`
	qLastLog         = `SELECT id, hash FROM logs WHERE ledger_id = ? ORDER BY id DESC LIMIT 1`
	qInsertLog       = `INSERT INTO logs (ledger_id, id, type, data, date, idempotency_key, idempotency_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`
	qAccountMetadata = `SELECT metadata FROM accounts WHERE ledger_id = ? AND address = ?`
	qInsertAccount   = `INSERT INTO accounts (ledger_id, address, metadata, first_usage, insertion_date, updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (ledger_id, address) DO NOTHING`
	qUpdateAccount   = `UPDATE accounts SET metadata = ?, updated_at = ? WHERE ledger_id = ? AND address = ?`

	qLedgerByName   = `SELECT id, bucket, metadata, features, added_at FROM ledgers WHERE name = ?`
	qAccount        = `SELECT metadata, first_usage, insertion_date, updated_at FROM accounts WHERE ledger_id = ? AND address = ?`
	qLogsFrom       = logColumns + `WHERE ledger_id = ? AND id >= ? ORDER BY id ASC LIMIT ?`
	qLogsUpTo       = logColumns + `WHERE ledger_id = ? AND id <= ? ORDER BY id DESC LIMIT ?`
	qOlderLogExists = `SELECT EXISTS (SELECT 1 FROM logs WHERE ledger_id = ? AND id < ?)`
	qNewerLogExists = `SELECT EXISTS (SELECT 1 FROM logs WHERE ledger_id = ? AND id > ?)`

	logColumns = `SELECT id, type, data, date, idempotency_key, idempotency_hash, hash FROM logs `
)

var (
	writeQueries = []string{qIdempotencyHash, qLastLog, qInsertLog, qAccountMetadata, qInsertAccount, qUpdateAccount,
		qVolume, qVolumesOf, qUpsertVolume, qLastTxID, qSetLastTxID, qReferenceTaken, qInsertTx, qIndexTx, qTouchAccount}
	readQueries = []string{qLedgerByName, qAccount, qLogsFrom, qLogsUpTo, qOlderLogExists, qNewerLogExists, qTransaction, qLogData, qVolumesRead}
)

// idempotencyMismatchError is the real ledger's ErrInvalidIdempotencyInput.
type idempotencyMismatchError struct {
	key, computed, stored string
}

func (e *idempotencyMismatchError) Error() string {
	return fmt.Sprintf("invalid idempotency hash when using idempotency key '%s', has computed '%s' but '%s' is stored",
		e.key, e.computed, e.stored)
}

// idempotencyHash is the real ledger's ComputeIdempotencyHash: sha256 of the
// json.Encoder output of the command input (trailing newline included, HTML
// escaping on, map keys sorted), base64-URL encoded with padding.
func idempotencyHash(input any) string {
	h := sha256.New()
	if err := json.NewEncoder(h).Encode(input); err != nil {
		// Inputs are structs of strings and string maps: they always encode.
		panic(fmt.Sprintf("embeddedledger: encode idempotency input: %v", err))
	}
	return base64.URLEncoding.EncodeToString(h.Sum(nil))
}

// saveAccountMetadataInput and deleteAccountMetadataInput have the field names
// and order of the real ledger's command parameters, which is what it hashes.
type saveAccountMetadataInput struct {
	Address  string
	Metadata map[string]string
}

type deleteAccountMetadataInput struct {
	Address string
	Key     string
}

func (l *Ledger) getLedger(ctx context.Context, name string) (ledgerRow, bool, error) {
	l.mu.RLock()
	row, ok := l.ledgers[name]
	l.mu.RUnlock()
	if ok {
		return row, true, nil
	}
	var md, features string
	var added int64
	err := l.readStmt(qLedgerByName).QueryRowContext(ctx, name).
		Scan(&row.ID, &row.Bucket, &md, &features, &added)
	if errors.Is(err, sql.ErrNoRows) {
		return ledgerRow{}, false, nil
	}
	if err != nil {
		return ledgerRow{}, false, fmt.Errorf("read ledger: %w", err)
	}
	row.Name = name
	row.AddedAt = time.UnixMicro(added).UTC()
	if err := json.Unmarshal([]byte(md), &row.Metadata); err != nil {
		return ledgerRow{}, false, fmt.Errorf("decode ledger metadata: %w", err)
	}
	if err := json.Unmarshal([]byte(features), &row.Features); err != nil {
		return ledgerRow{}, false, fmt.Errorf("decode ledger features: %w", err)
	}
	l.mu.Lock()
	l.ledgers[name] = row
	l.mu.Unlock()
	return row, true, nil
}

func (l *Ledger) createLedger(ctx context.Context, row ledgerRow) error {
	md, err := json.Marshal(nonNil(row.Metadata))
	if err != nil {
		return err
	}
	features, err := json.Marshal(nonNil(row.Features))
	if err != nil {
		return err
	}

	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	tx, err := l.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()

	var exists bool
	if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM ledgers WHERE name = ?)`, row.Name).Scan(&exists); err != nil {
		return fmt.Errorf("look up ledger: %w", err)
	}
	if exists {
		return errLedgerExists
	}
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO ledgers (name, bucket, metadata, features, added_at) VALUES (?, ?, ?, ?, ?)`,
		row.Name, row.Bucket, string(md), string(features), row.AddedAt.UnixMicro()); err != nil {
		return fmt.Errorf("insert ledger: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (l *Ledger) getAccount(ctx context.Context, ledgerID int64, address string) (accountRow, bool, error) {
	var md string
	var first, inserted, updated int64
	err := l.readStmt(qAccount).
		QueryRowContext(ctx, ledgerID, address).Scan(&md, &first, &inserted, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return accountRow{}, false, nil
	}
	if err != nil {
		return accountRow{}, false, fmt.Errorf("read account: %w", err)
	}
	a := accountRow{
		Address:       address,
		FirstUsage:    time.UnixMicro(first).UTC(),
		InsertionDate: time.UnixMicro(inserted).UTC(),
		UpdatedAt:     time.UnixMicro(updated).UTC(),
	}
	if err := json.Unmarshal([]byte(md), &a.Metadata); err != nil {
		return accountRow{}, false, fmt.Errorf("decode account metadata: %w", err)
	}
	return a, true, nil
}

// write is the real ledger's forgeLog: in one transaction, look the
// Idempotency-Key up (a stored key answers a hit or a mismatch and changes
// nothing), otherwise apply the command and append its log carrying the key
// and hash. dryRun rolls everything back, so the key is not consumed.
type write struct {
	ledgerID int64
	ikey     string
	ihash    string
	dryRun   bool
	// account is the address a metadata write may create; "" for writes
	// that never create an account.
	account string
	// apply changes the state and returns the log's type and payload, and
	// whether it created the account.
	apply func(ctx context.Context, tx querier, now time.Time) (typ string, payload any, created bool, err error)

	// arrival and origin place the write among concurrent ones (see
	// raceTracker): when its request arrived, and which request (or
	// element of a parallel bulk) it belongs to.
	arrival arrival
	origin  uint64
}

// write runs w through the committer and returns the id of its log (the
// stored one on an idempotency hit). err is the write's answer when it is
// an *httpError, an *idempotencyMismatchError or errRacingCreate; anything
// else is a storage failure.
func (l *Ledger) write(ctx context.Context, w write) (logID int64, hit bool, err error) {
	a, depart := l.arrivalOf(ctx)
	defer depart()
	w.arrival = a
	w.origin = l.origins.Add(1)

	var answer error
	created := false
	j := &job{ctx: ctx, weight: 1, run: func(g *groupTx) error {
		before := len(g.created.list)
		defer func() { created = created || len(g.created.list) > before }()
		var m groupMark
		if w.dryRun {
			var err error
			if m, err = g.mark("dry_run"); err != nil {
				return err
			}
		}
		id, h, err := l.forge(g.ctx, g.tx, w, g.tip(w.ledgerID), &g.created)
		if err != nil && !isAnswer(err) {
			return err
		}
		logID, hit, answer = id, h, err
		if w.dryRun {
			return g.rollbackTo(m)
		}
		return nil
	}}
	if err := l.submit(j); err != nil {
		return 0, false, err
	}
	if created {
		l.races.linger(ctx, a)
	}
	return logID, hit, answer
}

// isAnswer tells a write's refusal, answered to its client, from a storage
// failure.
func isAnswer(err error) bool {
	var mismatch *idempotencyMismatchError
	var he *httpError
	return errors.As(err, &mismatch) || errors.As(err, &he) || errors.Is(err, errRacingCreate)
}

// logTip is the newest log of a ledger as the current transaction sees it.
// forge reads it when it is not known yet and advances it with every log it
// appends, so that a bulk reads it once rather than once per element.
type logTip struct {
	known bool
	id    int64
	hash  []byte
}

// forge is the body of write, inside the caller's transaction: it returns
// the id of the new log, or of the stored one on an idempotency hit. An
// account it creates is added to created, under the write's origin.
func (l *Ledger) forge(ctx context.Context, tx *preparedTx, w write, tip *logTip, created *txCreations) (logID int64, hit bool, err error) {
	if w.account != "" {
		// Before the key: a write that raced the account's creator did not
		// see the creator's key either (see errRacingCreate).
		k := accountKey{w.ledgerID, w.account}
		if created.byOther(k, w.origin) || l.races.createdSince(k, w.arrival) {
			return 0, false, errRacingCreate
		}
	}
	if w.ikey != "" {
		var storedID int64
		var stored sql.NullString
		err := tx.QueryRowContext(ctx,
			qIdempotencyHash,
			w.ledgerID, w.ikey).Scan(&storedID, &stored)
		switch {
		case err == nil:
			// Legacy logs without a hash skip the comparison, as in the real one.
			if stored.String != "" && stored.String != w.ihash {
				return 0, false, &idempotencyMismatchError{key: w.ikey, computed: w.ihash, stored: stored.String}
			}
			return storedID, true, nil
		case !errors.Is(err, sql.ErrNoRows):
			return 0, false, fmt.Errorf("look up idempotency key: %w", err)
		}
	}

	now := l.now().UTC().Truncate(time.Microsecond)
	typ, payload, createdAccount, err := w.apply(ctx, tx, now)
	if err != nil {
		return 0, false, err
	}
	data, err := json.Marshal(payload)
	if err != nil {
		return 0, false, fmt.Errorf("encode log payload: %w", err)
	}

	if !tip.known {
		err = tx.QueryRowContext(ctx,
			qLastLog, w.ledgerID).Scan(&tip.id, &tip.hash)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return 0, false, fmt.Errorf("read last log: %w", err)
		}
		tip.known = true
	}
	row := logRow{ID: tip.id + 1, Type: typ, Data: data, Date: now, IdempotencyKey: w.ikey, IdempotencyHsh: w.ihash}
	row.Hash = chainHash(tip.hash, row)

	if _, err := tx.ExecContext(ctx,
		qInsertLog,
		w.ledgerID, row.ID, row.Type, string(row.Data), row.Date.UnixMicro(),
		nullString(w.ikey), nullString(w.ihash), row.Hash); err != nil {
		return 0, false, fmt.Errorf("insert log: %w", err)
	}
	tip.id, tip.hash = row.ID, row.Hash
	if createdAccount {
		created.add(accountKey{w.ledgerID, w.account}, w.origin, l.races.until(w.arrival))
	}
	return row.ID, false, nil
}

// chainHash chains logs like the real ledger does in spirit (sha256 over the
// JSON of the previous hash, then the JSON of the log) but is not
// byte-identical to it: the real one hashes its own Go structs.
func chainHash(previous []byte, l logRow) []byte {
	h := sha256.New()
	enc := json.NewEncoder(h)
	if previous != nil {
		_ = enc.Encode(previous)
	}
	_ = enc.Encode(logView{
		ID: l.ID, Type: l.Type, Data: l.Data, Date: formatTime(l.Date),
		IdempotencyKey: l.IdempotencyKey, IdempotencyHash: l.IdempotencyHsh,
	})
	return h.Sum(nil)
}

// saveAccountMetadata is the real UpsertAccounts: a missing account is
// created with the sent metadata; an existing one gets a shallow merge (sent
// keys overwrite, others stay) and a new updated_at, unless it already
// contains every sent key with the same value.
func saveAccountMetadata(ledgerID int64, address string, md map[string]string) func(context.Context, querier, time.Time) (string, any, bool, error) {
	return func(ctx context.Context, tx querier, now time.Time) (string, any, bool, error) {
		payload := setMetadataPayload{TargetType: targetTypeAccount, TargetID: address, Metadata: nonNil(md)}
		// Insert first: most writes create their account, and an insert that
		// meets an existing row changes nothing and says so.
		enc, err := json.Marshal(nonNil(md))
		if err != nil {
			return "", nil, false, err
		}
		res, err := tx.ExecContext(ctx,
			qInsertAccount,
			ledgerID, address, string(enc), now.UnixMicro(), now.UnixMicro(), now.UnixMicro())
		if err != nil {
			return "", nil, false, fmt.Errorf("insert account: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return "", nil, false, fmt.Errorf("insert account: %w", err)
		} else if n == 1 {
			return logTypeSetMetadata, payload, true, nil
		}

		var raw string
		if err := tx.QueryRowContext(ctx, qAccountMetadata, ledgerID, address).Scan(&raw); err != nil {
			return "", nil, false, fmt.Errorf("read account: %w", err)
		}
		current := map[string]string{}
		if err := json.Unmarshal([]byte(raw), &current); err != nil {
			return "", nil, false, fmt.Errorf("decode account metadata: %w", err)
		}
		if !contains(current, md) {
			for k, v := range md {
				current[k] = v
			}
			enc, err := json.Marshal(current)
			if err != nil {
				return "", nil, false, err
			}
			if _, err := tx.ExecContext(ctx,
				qUpdateAccount,
				string(enc), now.UnixMicro(), ledgerID, address); err != nil {
				return "", nil, false, fmt.Errorf("update account: %w", err)
			}
		}
		return logTypeSetMetadata, payload, false, nil
	}
}

// deleteAccountMetadata is the real DeleteAccountMetadata: it removes the key
// and bumps updated_at of an existing account (inferred: even when the key is
// absent), does nothing to a missing one, and logs in every case.
func deleteAccountMetadata(ledgerID int64, address, key string) func(context.Context, querier, time.Time) (string, any, bool, error) {
	return func(ctx context.Context, tx querier, now time.Time) (string, any, bool, error) {
		var raw string
		err := tx.QueryRowContext(ctx,
			qAccountMetadata, ledgerID, address).Scan(&raw)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return "", nil, false, fmt.Errorf("read account: %w", err)
		default:
			current := map[string]string{}
			if err := json.Unmarshal([]byte(raw), &current); err != nil {
				return "", nil, false, fmt.Errorf("decode account metadata: %w", err)
			}
			delete(current, key)
			enc, err := json.Marshal(current)
			if err != nil {
				return "", nil, false, err
			}
			if _, err := tx.ExecContext(ctx,
				qUpdateAccount,
				string(enc), now.UnixMicro(), ledgerID, address); err != nil {
				return "", nil, false, fmt.Errorf("update account: %w", err)
			}
		}
		return logTypeDeleteMetadata, deleteMetadataPayload{TargetType: targetTypeAccount, TargetID: address, Key: key}, false, nil
	}
}

// logsQuery selects a page of logs, newest first. Exactly one of maxID (ids
// up to it, the first page and every "next") and minID (the page of the
// pageSize oldest ids from it up, every "previous") is used; zero maxID
// means "from the newest".
type logsQuery struct {
	PageSize int   `json:"pageSize"`
	MaxID    int64 `json:"maxID,omitempty"`
	MinID    int64 `json:"minID,omitempty"`
	// Paginated is true for queries built from a cursor: only those get a
	// "previous" cursor, as in the real ledger.
	Paginated bool `json:"paginated,omitempty"`
}

type logsPage struct {
	Logs     []logRow
	HasMore  bool
	Previous *logsQuery
	Next     *logsQuery
}

func (l *Ledger) listLogs(ctx context.Context, ledgerID int64, q logsQuery) (logsPage, error) {
	var rows *sql.Rows
	var err error
	if q.MinID > 0 {
		rows, err = l.readStmt(qLogsFrom).QueryContext(ctx,
			ledgerID, q.MinID, q.PageSize)
	} else {
		maxID := q.MaxID
		if maxID <= 0 {
			maxID = 1<<63 - 1
		}
		rows, err = l.readStmt(qLogsUpTo).QueryContext(ctx,
			ledgerID, maxID, q.PageSize)
	}
	if err != nil {
		return logsPage{}, fmt.Errorf("list logs: %w", err)
	}
	defer rows.Close()

	var page logsPage
	for rows.Next() {
		var r logRow
		var data string
		var date int64
		var ik, ih sql.NullString
		if err := rows.Scan(&r.ID, &r.Type, &data, &date, &ik, &ih, &r.Hash); err != nil {
			return logsPage{}, fmt.Errorf("scan log: %w", err)
		}
		r.Data = json.RawMessage(data)
		r.Date = time.UnixMicro(date).UTC()
		r.IdempotencyKey, r.IdempotencyHsh = ik.String, ih.String
		page.Logs = append(page.Logs, r)
	}
	if err := rows.Err(); err != nil {
		return logsPage{}, fmt.Errorf("list logs: %w", err)
	}
	if q.MinID > 0 {
		for i, j := 0, len(page.Logs)-1; i < j; i, j = i+1, j-1 {
			page.Logs[i], page.Logs[j] = page.Logs[j], page.Logs[i]
		}
	}
	if len(page.Logs) == 0 {
		return page, nil
	}

	newest, oldest := page.Logs[0].ID, page.Logs[len(page.Logs)-1].ID
	older, err := l.logExists(ctx, qOlderLogExists, ledgerID, oldest)
	if err != nil {
		return logsPage{}, err
	}
	if older {
		page.HasMore = true
		page.Next = &logsQuery{PageSize: q.PageSize, MaxID: oldest - 1, Paginated: true}
	}
	if q.Paginated {
		newer, err := l.logExists(ctx, qNewerLogExists, ledgerID, newest)
		if err != nil {
			return logsPage{}, err
		}
		if newer {
			page.Previous = &logsQuery{PageSize: q.PageSize, MinID: newest + 1, Paginated: true}
		}
	}
	return page, nil
}

func (l *Ledger) logExists(ctx context.Context, query string, ledgerID, id int64) (bool, error) {
	var ok bool
	if err := l.readStmt(query).QueryRowContext(ctx, ledgerID, id).Scan(&ok); err != nil {
		return false, fmt.Errorf("probe logs: %w", err)
	}
	return ok, nil
}

// contains is Postgres' jsonb @> for flat string maps.
func contains(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func nullString(s string) sql.NullString {
	return sql.NullString{String: s, Valid: s != ""}
}

// encodeCursor and decodeCursor make the opaque cursor strings: base64-URL
// JSON of a logsQuery, like the real ledger's (not interchangeable with it).
func encodeCursor(q *logsQuery) string {
	if q == nil {
		return ""
	}
	b, _ := json.Marshal(q)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string) (logsQuery, error) {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return logsQuery{}, err
	}
	var q logsQuery
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&q); err != nil {
		return logsQuery{}, err
	}
	if q.PageSize < 1 || q.PageSize > MaxPageSize || q.MaxID < 0 || q.MinID < 0 || (q.MaxID > 0 && q.MinID > 0) {
		return logsQuery{}, errors.New("cursor out of range")
	}
	return q, nil
}
