package worker

import (
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// poolIdleTimeout is how long a goroutine of a pool waits for its next call
// before it ends. Under load the next delivery comes within milliseconds;
// after a burst, kept goroutines would hold their grown stacks, which a
// process under a soft memory limit pays for: kept for a second, they
// slowed the raw JetStream loop that `bench --workload user` runs right
// after the worker's commands, on the same server.
const poolIdleTimeout = 100 * time.Millisecond

// pool runs functions on goroutines kept from one call to the next. A fresh
// goroutine starts with a small stack and grows it, copying it each time, as
// the call goes down through codecs, the ledger client and the NATS client;
// a kept one has grown it already: the worker handled each delivery on the
// goroutine the router starts for it, and growing its stack took 6-8% of the
// worker's CPU; handled on a pool's goroutine, 0.5%. A call takes an idle
// goroutine, or starts one: it never waits for a busy one, so calls that wait for one
// another cannot deadlock. At most maxIdle goroutines wait for work, each
// for poolIdleTimeout at most, and none once the pool is stopped.
type pool struct {
	jobs    chan func()
	maxIdle int64
	stopped chan struct{}
	stop    sync.Once

	idle, started atomic.Int64
}

// newPool returns a pool that keeps at most maxIdle idle goroutines (at least
// one).
func newPool(maxIdle int) *pool {
	return &pool{jobs: make(chan func()), maxIdle: int64(max(maxIdle, 1)), stopped: make(chan struct{})}
}

// goRun runs f on one of p's goroutines, as the go statement would: a panic in
// f ends the program.
func (p *pool) goRun(f func()) {
	select {
	case p.jobs <- f:
	default:
		p.started.Add(1)
		go p.loop(f)
	}
}

// run runs f on one of p's goroutines and waits for it. A panic in f is
// raised again on the caller's goroutine, its value then carrying the stack
// of the goroutine that panicked; so is a runtime.Goexit in f, which would
// otherwise pass for a return.
func (p *pool) run(f func()) {
	done := make(chan *poolPanic, 1)
	p.goRun(func() {
		returned := false
		defer func() {
			switch v := recover(); {
			case v != nil:
				done <- &poolPanic{value: v, stack: debug.Stack()}
			case !returned:
				done <- &poolPanic{value: "the goroutine exited (runtime.Goexit)"}
			default:
				done <- nil
			}
		}()
		f()
		returned = true
	})
	if e := <-done; e != nil {
		panic(e)
	}
}

// stopIdle ends the idle goroutines, and those that become idle later.
func (p *pool) stopIdle() { p.stop.Do(func() { close(p.stopped) }) }

// idleCount returns how many goroutines wait for work; startedCount how
// many were started (for tests).
func (p *pool) idleCount() int64    { return p.idle.Load() }
func (p *pool) startedCount() int64 { return p.started.Load() }

func (p *pool) loop(job func()) {
	idle := time.NewTimer(poolIdleTimeout)
	defer idle.Stop()
	for {
		job()
		if p.idle.Add(1) > p.maxIdle {
			p.idle.Add(-1)
			return
		}
		idle.Reset(poolIdleTimeout)
		select {
		case job = <-p.jobs:
			p.idle.Add(-1)
		case <-idle.C:
			p.idle.Add(-1)
			return
		case <-p.stopped:
			p.idle.Add(-1)
			return
		}
	}
}

// poolPanic is a panic of a pool's goroutine in run, raised again on the
// caller's.
type poolPanic struct {
	value any
	stack []byte
}

func (p *poolPanic) Error() string {
	if p.stack == nil {
		return fmt.Sprint(p.value)
	}
	return fmt.Sprintf("%v\n\nstack of the goroutine that panicked:\n%s", p.value, p.stack)
}
