package embeddedledger

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
)

// Group commit. SQLite has one writer at a time, and most of a small write's
// cost is its transaction: BEGIN, COMMIT and the write-ahead log frames of
// the pages it touched. So the write requests that wait while a transaction
// runs are not run one after another: one goroutine, the committer, takes
// every request queued so far and runs them in a single transaction, in
// arrival order, then commits once and answers them all. A request arriving
// at an idle ledger runs at once, alone, so a lone write waits for nobody.
//
// Each request in a group is still its own write: its own Idempotency-Key
// check, log, answer and outcome (a refusal of one leaves the others
// alone), and none is answered before the transaction that holds it has
// committed, so an answered write is as durable as before. Requests of one
// group are concurrent in the real ledger's sense: two of them creating one
// account race (see errRacingCreate).

// maxGroupWeight bounds the work of one group transaction: a single write
// weighs 1, a bulk its number of elements. A request heavier than that
// runs alone.
const maxGroupWeight = 512

// errClosed answers the writes that reach a closed ledger.
var errClosed = errors.New("embeddedledger: ledger closed")

// job is one write request's work in a group transaction. run does the
// work and keeps its outcome (an answer, success or refusal) itself; it
// returns an error only for a storage failure, which aborts the group. run
// may be called again, in a transaction of its own, after such an abort.
type job struct {
	ctx    context.Context
	weight int
	run    func(g *groupTx) error
	err    error // a storage failure, the committer's answer
	done   chan struct{}
}

// groupTx is the transaction a group of jobs runs in.
type groupTx struct {
	// ctx is the statements' context: not a request's, whose end must not
	// abort the others' transaction.
	ctx     context.Context
	tx      *preparedTx
	tips    map[int64]*logTip // newest log per ledger, as this transaction sees it
	created txCreations
	l       *Ledger
}

// tip returns the newest log of a ledger within the transaction, starting
// from the committed one the ledger remembers.
func (g *groupTx) tip(ledgerID int64) *logTip {
	t, ok := g.tips[ledgerID]
	if !ok {
		t = &logTip{}
		if known, ok := g.l.tips[ledgerID]; ok {
			*t = known
		}
		g.tips[ledgerID] = t
	}
	return t
}

// mark and rollbackTo undo, within the transaction, the work of a job that
// must not stay (a dry run, a failed atomic bulk): a savepoint for the
// database, saved copies for the tips and created accounts.
type groupMark struct {
	name    string
	tips    map[int64]logTip
	created int
}

func (g *groupTx) mark(name string) (groupMark, error) {
	if _, err := g.tx.tx.ExecContext(g.ctx, "SAVEPOINT "+name); err != nil {
		return groupMark{}, fmt.Errorf("savepoint: %w", err)
	}
	m := groupMark{name: name, tips: map[int64]logTip{}, created: len(g.created.list)}
	for id, t := range g.tips {
		m.tips[id] = *t
	}
	return m, nil
}

func (g *groupTx) rollbackTo(m groupMark) error {
	if _, err := g.tx.tx.ExecContext(g.ctx, "ROLLBACK TO "+m.name); err != nil {
		return fmt.Errorf("rollback to savepoint: %w", err)
	}
	if _, err := g.tx.tx.ExecContext(g.ctx, "RELEASE "+m.name); err != nil {
		return fmt.Errorf("release savepoint: %w", err)
	}
	for id, t := range g.tips {
		if saved, ok := m.tips[id]; ok {
			*t = saved
		} else {
			delete(g.tips, id)
		}
	}
	g.created.truncate(m.created)
	return nil
}

func (g *groupTx) release(m groupMark) error {
	if _, err := g.tx.tx.ExecContext(g.ctx, "RELEASE "+m.name); err != nil {
		return fmt.Errorf("release savepoint: %w", err)
	}
	return nil
}

// writeQueue holds the jobs waiting for the committer.
type writeQueue struct {
	mu     sync.Mutex
	jobs   []*job
	closed bool
	wake   chan struct{} // one token: jobs are waiting
}

func newWriteQueue() *writeQueue { return &writeQueue{wake: make(chan struct{}, 1)} }

func (q *writeQueue) push(j *job) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return errClosed
	}
	q.jobs = append(q.jobs, j)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return nil
}

// take waits for jobs and returns the oldest ones, up to maxGroupWeight
// (at least one); nil once the queue is closed and empty.
func (q *writeQueue) take() []*job {
	for {
		q.mu.Lock()
		if len(q.jobs) > 0 {
			n, weight := 0, 0
			for n < len(q.jobs) && (n == 0 || weight+q.jobs[n].weight <= maxGroupWeight) {
				weight += q.jobs[n].weight
				n++
			}
			group := make([]*job, n)
			copy(group, q.jobs)
			rest := copy(q.jobs, q.jobs[n:])
			clear(q.jobs[rest:])
			q.jobs = q.jobs[:rest]
			q.mu.Unlock()
			return group
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return nil
		}
		<-q.wake
	}
}

func (q *writeQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// submit queues j and waits until the committer is done with it.
func (l *Ledger) submit(j *job) error {
	j.done = make(chan struct{})
	if err := l.queue.push(j); err != nil {
		return err
	}
	<-j.done
	return j.err
}

// commitLoop is the committer; it runs from Open until the queue closes.
func (l *Ledger) commitLoop() {
	defer close(l.committerDone)
	for {
		group := l.queue.take()
		if group == nil {
			return
		}
		l.runGroup(group)
	}
}

// runGroup runs jobs in one transaction and answers them. When a storage
// failure aborts the transaction, every job runs again in a transaction of
// its own, so that only the job that fails is answered with it.
func (l *Ledger) runGroup(jobs []*job) {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	live := jobs[:0:0]
	for _, j := range jobs {
		if err := j.ctx.Err(); err != nil {
			j.err = err // its client is gone: nothing was applied
			close(j.done)
			continue
		}
		live = append(live, j)
	}
	if len(live) == 0 {
		return
	}
	err := l.commitGroup(live)
	if err != nil && len(live) > 1 {
		l.log.Warn("embeddedledger: a group transaction failed; running its writes one by one", "writes", len(live), "err", err)
		for _, j := range live {
			j.err = l.commitGroup([]*job{j})
			close(j.done)
		}
		return
	}
	for _, j := range live {
		j.err = err
		close(j.done)
	}
}

func (l *Ledger) commitGroup(jobs []*job) error {
	ctx := context.Background()
	sqlTx, err := l.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = sqlTx.Rollback() }()
	g := &groupTx{ctx: ctx, tx: newPreparedTx(l, sqlTx), tips: map[int64]*logTip{}, l: l}
	for _, j := range jobs {
		if err := j.run(g); err != nil {
			return err
		}
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	for id, t := range g.tips {
		if t.known {
			l.tips[id] = *t
		}
	}
	l.races.committed(g.created.list)
	l.commits.Add(1)
	return nil
}

// preparedTx runs a transaction's statements through statements prepared
// once on the single write connection, bound to the transaction once.
type preparedTx struct {
	l     *Ledger
	tx    *sql.Tx
	bound map[string]*sql.Stmt
}

func newPreparedTx(l *Ledger, tx *sql.Tx) *preparedTx {
	return &preparedTx{l: l, tx: tx, bound: map[string]*sql.Stmt{}}
}

func (p *preparedTx) stmt(ctx context.Context, query string) *sql.Stmt {
	if s, ok := p.bound[query]; ok {
		return s
	}
	s := p.l.stmt(p.l.w, query)
	if s != nil {
		s = p.tx.StmtContext(ctx, s)
	}
	p.bound[query] = s
	return s
}

func (p *preparedTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if s := p.stmt(ctx, query); s != nil {
		return s.QueryRowContext(ctx, args...)
	}
	return p.tx.QueryRowContext(ctx, query, args...)
}

func (p *preparedTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if s := p.stmt(ctx, query); s != nil {
		return s.QueryContext(ctx, args...)
	}
	return p.tx.QueryContext(ctx, query, args...)
}

func (p *preparedTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if s := p.stmt(ctx, query); s != nil {
		return s.ExecContext(ctx, args...)
	}
	return p.tx.ExecContext(ctx, query, args...)
}
