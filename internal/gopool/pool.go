// Package gopool runs functions on goroutines kept from one call to the
// next.
//
// A fresh goroutine starts with a small stack and grows it, copying it each
// time, as the call goes down through codecs, HTTP and NATS clients and the
// embedded ledger; a kept one has grown it already. Per command, the worker
// handles each delivery on the goroutine the router starts for it, and
// growing its stack took 6-8% of the worker's CPU; handled on a Pool's
// goroutine, 0.5%.
package gopool

import (
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// IdleTimeout is how long a goroutine of a Pool waits for its next call
// before it ends.
const IdleTimeout = 10 * time.Second

// Pool runs functions on its goroutines. A call takes an idle goroutine, or
// starts one: it never waits for a busy one, so calls that wait for one
// another cannot deadlock. At most maxIdle goroutines wait for work, each
// for IdleTimeout at most, and none once the Pool is stopped.
type Pool struct {
	jobs    chan func()
	maxIdle int64
	stopped chan struct{}
	stop    func()

	idle, started atomic.Int64
}

// New returns a Pool that keeps at most maxIdle idle goroutines (at least
// one).
func New(maxIdle int) *Pool {
	p := &Pool{jobs: make(chan func()), maxIdle: int64(max(maxIdle, 1)), stopped: make(chan struct{})}
	p.stop = sync.OnceFunc(func() { close(p.stopped) })
	return p
}

// Go runs f on one of p's goroutines, as the go statement would: a panic in
// f ends the program.
func (p *Pool) Go(f func()) {
	select {
	case p.jobs <- f:
	default:
		p.started.Add(1)
		go p.loop(f)
	}
}

// Run runs f on one of p's goroutines and waits for it. A panic in f is
// raised again on the caller's goroutine, its value then carrying the stack
// of the goroutine that panicked; so is a runtime.Goexit in f, which would
// otherwise pass for a return.
func (p *Pool) Run(f func()) {
	done := make(chan *Panic, 1)
	p.Go(func() {
		returned := false
		defer func() {
			switch v := recover(); {
			case v != nil:
				done <- &Panic{Value: v, Stack: debug.Stack()}
			case !returned:
				done <- &Panic{Value: "the goroutine exited (runtime.Goexit)"}
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

// Stop ends the idle goroutines, and those that become idle later.
func (p *Pool) Stop() { p.stop() }

// Idle returns how many goroutines wait for work; Started how many were
// started.
func (p *Pool) Idle() int64    { return p.idle.Load() }
func (p *Pool) Started() int64 { return p.started.Load() }

func (p *Pool) loop(job func()) {
	idle := time.NewTimer(IdleTimeout)
	defer idle.Stop()
	for {
		job()
		if p.idle.Add(1) > p.maxIdle {
			p.idle.Add(-1)
			return
		}
		idle.Reset(IdleTimeout)
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

// Panic is a panic of a Pool's goroutine in Run, raised again on the
// caller's.
type Panic struct {
	Value any
	Stack []byte
}

func (p *Panic) Error() string {
	if p.Stack == nil {
		return fmt.Sprint(p.Value)
	}
	return fmt.Sprintf("%v\n\nstack of the goroutine that panicked:\n%s", p.Value, p.Stack)
}
