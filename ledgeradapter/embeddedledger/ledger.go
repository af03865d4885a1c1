package embeddedledger

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// FileName is the name of the SQLite database Open keeps in its directory.
const FileName = "ledger.db"

// schemaVersion is stored in PRAGMA user_version; Open refuses a file written
// by a newer layout rather than guessing.
const schemaVersion = 3

const (
	// DefaultPageSize and MaxPageSize mirror the real server's
	// DEFAULT_PAGE_SIZE and MAX_PAGE_SIZE defaults (CONTRACT §6).
	DefaultPageSize = 15
	MaxPageSize     = 100

	// maxIdempotencyKeyLen mirrors logs.idempotency_key varchar(255).
	maxIdempotencyKeyLen = 255

	// readConns bounds the read pool of a file-backed ledger.
	readConns = 8

	busyTimeout = 10 * time.Second
)

// Option configures Open.
type Option func(*options)

type options struct {
	syncFull   bool
	raceWindow time.Duration
	now        func() time.Time
	log        *slog.Logger
}

// WithSyncFull makes every commit fsync the write-ahead log
// (synchronous=FULL), so that an acknowledged write also survives a power
// loss. The default (NORMAL) already survives a crash of the process.
func WithSyncFull() Option { return func(o *options) { o.syncFull = true } }

// WithLogger sets where the causes of 500 answers are logged (default: a
// logger that discards).
func WithLogger(log *slog.Logger) Option { return func(o *options) { o.log = log } }

// WithRaceWindow sets how long a write that creates an account counts as
// open at least, for the writes that race it (see errRacingCreate; default
// 5 ms, 0 for none: then only writes that truly overlap race). It applies to
// requests over a connection, not to those handed over by Transport.
func WithRaceWindow(d time.Duration) Option { return func(o *options) { o.raceWindow = max(d, 0) } }

// WithClock replaces time.Now for the dates the ledger records (tests).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// Ledger is an embedded Formance-v2-compatible ledger. Its methods are safe
// for concurrent use.
type Ledger struct {
	// writeMu serializes write transactions: with one write connection
	// SQLite would serialize them anyway, the mutex only keeps waiting
	// goroutines out of database/sql's connection queue and makes the
	// check-then-write of an Idempotency-Key trivially atomic.
	writeMu sync.Mutex
	w       *sql.DB
	r       *sql.DB
	now     func() time.Time
	log     *slog.Logger

	mu      sync.RWMutex
	ledgers map[string]ledgerRow // positive cache; ledgers are never deleted

	// races and origins emulate the real ledger's answer to racing first
	// writes of one account (see errRacingCreate).
	races   *raceTracker
	origins atomic.Uint64

	// queue feeds the committer (group.go); tips, the newest log of each
	// ledger as committed, is only used by it.
	queue         *writeQueue
	committerDone chan struct{}
	tips          map[int64]logTip
	commits       atomic.Int64 // group transactions committed

	scripts scriptCache

	// stmts is filled by Open and only read afterwards.
	stmts map[stmtKey]*sql.Stmt

	closeOnce sync.Once
	closeErr  error
}

// Open opens (creating when needed) the ledger stored in dir/ledger.db. With
// dir == "" the ledger lives in memory and vanishes on Close, which is meant
// for tests that do not exercise durability.
func Open(dir string, opts ...Option) (*Ledger, error) {
	o := options{now: time.Now, log: slog.New(slog.DiscardHandler), raceWindow: defaultRaceWindow}
	for _, opt := range opts {
		opt(&o)
	}
	l := &Ledger{now: o.now, log: o.log, ledgers: map[string]ledgerRow{}, stmts: map[stmtKey]*sql.Stmt{}, races: newRaceTracker(o.raceWindow),
		queue: newWriteQueue(), tips: map[int64]logTip{}}

	syncMode := "NORMAL"
	if o.syncFull {
		syncMode = "FULL"
	}
	q := url.Values{}
	q.Set("_busy_timeout", fmt.Sprint(busyTimeout.Milliseconds()))
	q.Set("_journal_mode", "WAL")
	q.Set("_synchronous", syncMode)
	q.Set("_txlock", "immediate")

	if dir == "" {
		// One connection that both reads and writes: every connection to
		// ":memory:" would otherwise be a database of its own.
		db, err := sql.Open("sqlite", ":memory:?"+q.Encode())
		if err != nil {
			return nil, fmt.Errorf("embeddedledger: open in-memory database: %w", err)
		}
		db.SetMaxOpenConns(1)
		db.SetMaxIdleConns(1)
		db.SetConnMaxLifetime(0)
		db.SetConnMaxIdleTime(0)
		l.w, l.r = db, db
	} else {
		if strings.ContainsAny(dir, "?#") {
			// The driver would read what follows as DSN parameters.
			return nil, fmt.Errorf("embeddedledger: data directory %q must not contain '?' or '#'", dir)
		}
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("embeddedledger: create data directory: %w", err)
		}
		path := filepath.Join(dir, FileName)
		w, err := sql.Open("sqlite", path+"?"+q.Encode())
		if err != nil {
			return nil, fmt.Errorf("embeddedledger: open %s: %w", path, err)
		}
		w.SetMaxOpenConns(1)
		w.SetMaxIdleConns(1)
		w.SetConnMaxLifetime(0)
		w.SetConnMaxIdleTime(0)
		l.w = w

		rq := url.Values{}
		rq.Set("_busy_timeout", fmt.Sprint(busyTimeout.Milliseconds()))
		rq.Set("_query_only", "1")
		r, err := sql.Open("sqlite", path+"?"+rq.Encode())
		if err != nil {
			_ = w.Close()
			return nil, fmt.Errorf("embeddedledger: open %s for reading: %w", path, err)
		}
		r.SetMaxOpenConns(readConns)
		r.SetMaxIdleConns(readConns)
		l.r = r
	}

	if err := l.migrate(context.Background()); err != nil {
		_ = l.Close()
		return nil, err
	}
	if err := l.prepare(context.Background()); err != nil {
		_ = l.Close()
		return nil, err
	}
	l.committerDone = make(chan struct{})
	go l.commitLoop()
	return l, nil
}

// Close releases the database. Requests still in flight fail; stop the HTTP
// server first.
func (l *Ledger) Close() error {
	l.closeOnce.Do(func() {
		l.queue.close()
		if l.committerDone != nil {
			<-l.committerDone // the writes already queued are done
		}
		var errs []error
		for _, s := range l.stmts {
			errs = append(errs, s.Close())
		}
		if l.r != nil && l.r != l.w {
			errs = append(errs, l.r.Close())
		}
		if l.w != nil {
			errs = append(errs, l.w.Close())
		}
		l.closeErr = errors.Join(errs...)
	})
	return l.closeErr
}

// migrations[i] takes the schema from version i to i+1.
var migrations = []string{ddlAccountsAndLogs, ddlTransactions, ddlTransactionAccounts}

const ddlAccountsAndLogs = `
CREATE TABLE ledgers (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	name      TEXT    NOT NULL UNIQUE,
	bucket    TEXT    NOT NULL,
	metadata  TEXT    NOT NULL,
	features  TEXT    NOT NULL,
	added_at  INTEGER NOT NULL
);
CREATE TABLE accounts (
	ledger_id      INTEGER NOT NULL REFERENCES ledgers (id),
	address        TEXT    NOT NULL,
	metadata       TEXT    NOT NULL,
	first_usage    INTEGER NOT NULL,
	insertion_date INTEGER NOT NULL,
	updated_at     INTEGER NOT NULL,
	PRIMARY KEY (ledger_id, address)
) WITHOUT ROWID;
CREATE TABLE logs (
	ledger_id        INTEGER NOT NULL REFERENCES ledgers (id),
	id               INTEGER NOT NULL,
	type             TEXT    NOT NULL,
	data             TEXT    NOT NULL,
	date             INTEGER NOT NULL,
	idempotency_key  TEXT,
	idempotency_hash TEXT,
	hash             BLOB    NOT NULL,
	PRIMARY KEY (ledger_id, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX logs_idempotency_key ON logs (ledger_id, idempotency_key)
	WHERE idempotency_key IS NOT NULL;
`

// ddlTransactions adds transactions (their JSON as rendered, with the
// reference and timestamp as columns to look up and order by), volumes per
// account and asset (decimal strings: amounts are arbitrary-precision), and
// the last transaction id given per ledger, which a refused write may use
// up as the real ledger's sequence does.
const ddlTransactions = `
CREATE TABLE transactions (
	ledger_id INTEGER NOT NULL REFERENCES ledgers (id),
	id        INTEGER NOT NULL,
	data      TEXT    NOT NULL,
	reference TEXT,
	timestamp INTEGER NOT NULL,
	PRIMARY KEY (ledger_id, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX transactions_reference ON transactions (ledger_id, reference)
	WHERE reference IS NOT NULL;
CREATE TABLE volumes (
	ledger_id INTEGER NOT NULL REFERENCES ledgers (id),
	address   TEXT    NOT NULL,
	asset     TEXT    NOT NULL,
	input     TEXT    NOT NULL,
	output    TEXT    NOT NULL,
	PRIMARY KEY (ledger_id, address, asset)
) WITHOUT ROWID;
CREATE TABLE transaction_ids (
	ledger_id INTEGER PRIMARY KEY REFERENCES ledgers (id),
	last      INTEGER NOT NULL
);
`

// ddlTransactionAccounts indexes transactions by the accounts their
// postings move, as source, destination or both, so that a list filtered on
// one account reads that account's transactions rather than the whole
// ledger's; the transactions already stored are indexed from their JSON.
const ddlTransactionAccounts = `
CREATE TABLE transaction_accounts (
	ledger_id   INTEGER NOT NULL REFERENCES ledgers (id),
	address     TEXT    NOT NULL,
	id          INTEGER NOT NULL,
	source      INTEGER NOT NULL,
	destination INTEGER NOT NULL,
	PRIMARY KEY (ledger_id, address, id)
) WITHOUT ROWID;
INSERT INTO transaction_accounts (ledger_id, address, id, source, destination)
	SELECT t.ledger_id, json_extract(p.value, '$.source'), t.id, 1, 0
	FROM transactions t, json_each(t.data, '$.postings') p WHERE true
	ON CONFLICT (ledger_id, address, id) DO NOTHING;
INSERT INTO transaction_accounts (ledger_id, address, id, source, destination)
	SELECT t.ledger_id, json_extract(p.value, '$.destination'), t.id, 0, 1
	FROM transactions t, json_each(t.data, '$.postings') p WHERE true
	ON CONFLICT (ledger_id, address, id) DO UPDATE SET destination = 1;
`

func (l *Ledger) migrate(ctx context.Context) error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()

	tx, err := l.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("embeddedledger: begin migration: %w", err)
	}
	defer func() { _ = tx.Rollback() }()

	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("embeddedledger: read schema version: %w", err)
	}
	switch {
	case version == schemaVersion:
		return nil
	case version > schemaVersion:
		return fmt.Errorf("embeddedledger: database schema version %d is newer than this build (%d)", version, schemaVersion)
	}
	for v := version; v < schemaVersion; v++ {
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			return fmt.Errorf("embeddedledger: migrate schema to version %d: %w", v+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", schemaVersion)); err != nil {
		return fmt.Errorf("embeddedledger: set schema version: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("embeddedledger: commit schema: %w", err)
	}
	return nil
}

type stmtKey struct {
	db    *sql.DB
	query string
}

// prepare prepares the hot-path statements. It runs before any request:
// preparing on the single write connection while a transaction holds it
// would wait forever.
func (l *Ledger) prepare(ctx context.Context) error {
	sets := []struct {
		db      *sql.DB
		queries []string
	}{{l.w, writeQueries}, {l.r, readQueries}}
	for _, set := range sets {
		db := set.db
		for _, q := range set.queries {
			s, err := db.PrepareContext(ctx, q)
			if err != nil {
				return fmt.Errorf("embeddedledger: prepare %q: %w", q, err)
			}
			l.stmts[stmtKey{db, q}] = s
		}
	}
	return nil
}

// stmt returns query as prepared on db, or nil: run it unprepared.
func (l *Ledger) stmt(db *sql.DB, query string) *sql.Stmt {
	return l.stmts[stmtKey{db, query}]
}

// readStmt runs a query on the read pool, prepared.
func (l *Ledger) readStmt(query string) reader {
	if s := l.stmt(l.r, query); s != nil {
		return s
	}
	return unprepared{db: l.r, query: query}
}

type reader interface {
	QueryRowContext(ctx context.Context, args ...any) *sql.Row
	QueryContext(ctx context.Context, args ...any) (*sql.Rows, error)
}

type unprepared struct {
	db    *sql.DB
	query string
}

func (u unprepared) QueryRowContext(ctx context.Context, args ...any) *sql.Row {
	return u.db.QueryRowContext(ctx, u.query, args...)
}

func (u unprepared) QueryContext(ctx context.Context, args ...any) (*sql.Rows, error) {
	return u.db.QueryContext(ctx, u.query, args...)
}

// querier is what a write transaction's steps use.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}
