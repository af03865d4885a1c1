package worker

import (
	"log/slog"
	"sync"
	"time"
)

// lease keeps a delivery from being redelivered while this process has it:
// every AckWait/3 it sends InProgress, which restarts the delivery's AckWait.
// It starts when the delivery is received and holds it while it waits for a
// slot or for the ledger, for as long as that takes; while an attempt runs it
// holds it until the attempt's deadline plus the settle timeout, so that a
// handler that ignores its context cannot keep the command forever. It ends
// with the settle.
type lease struct {
	mu      sync.Mutex
	t       *time.Timer
	until   time.Time // zero: as long as needed (waiting, not running)
	stopped bool
}

// startLease starts d's lease, renewed every period.
func startLease(d *delivery, period time.Duration, log *slog.Logger) {
	l := &d.lease
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t = time.AfterFunc(period, func() {
		l.mu.Lock()
		if l.stopped || d.settled.Load() {
			l.mu.Unlock()
			return
		}
		renew := l.until.IsZero() || time.Now().Before(l.until)
		l.t.Reset(period)
		l.mu.Unlock()
		if !renew {
			return // past the attempt's deadline and settle: let AckWait run
		}
		if err := d.msg.InProgress(); err != nil {
			log.Debug("in-progress failed", "subject", d.subject, "seq", d.seq, "error", err)
		}
	})
}

// holdUntil bounds the lease to t; a zero t holds it indefinitely.
func (l *lease) holdUntil(t time.Time) {
	l.mu.Lock()
	l.until = t
	l.mu.Unlock()
}

// stop ends the lease.
func (l *lease) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	if l.t != nil {
		l.t.Stop()
	}
}
