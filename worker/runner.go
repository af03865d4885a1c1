package worker

import (
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// runner runs each delivery's handling on a goroutine kept from one
// delivery to the next, instead of the fresh goroutine the router starts
// for each message. A fresh goroutine starts with a small stack and grows
// it, copying it each time, as the handling goes down through the codec,
// the ledger client and the NATS client; a kept one has grown it already.
// A call finds an idle goroutine, or starts one (so a handling never waits
// for another: waiting commands of a wallet keep theirs while their head
// runs), and a goroutine idle for runnerIdle ends.
type runner struct {
	jobs chan func()
	// started counts the goroutines started, for tests.
	started atomic.Int64
}

// runnerIdle is how long a goroutine of a runner waits for its next
// delivery before it ends.
const runnerIdle = 10 * time.Second

func newRunner() *runner { return &runner{jobs: make(chan func())} }

// run runs f on one of r's goroutines and waits for it. A panic in f is
// raised again here, on the router's goroutine, which recovers it; its
// value then carries the stack of the goroutine that panicked.
func (r *runner) run(f func()) {
	done := make(chan *runnerPanic, 1)
	job := func() {
		defer func() {
			if v := recover(); v != nil {
				done <- &runnerPanic{value: v, stack: debug.Stack()}
				return
			}
			done <- nil
		}()
		f()
	}
	select {
	case r.jobs <- job:
	default:
		r.started.Add(1)
		go r.loop(job)
	}
	if p := <-done; p != nil {
		panic(p)
	}
}

func (r *runner) loop(job func()) {
	idle := time.NewTimer(runnerIdle)
	defer idle.Stop()
	for {
		job()
		idle.Reset(runnerIdle)
		select {
		case job = <-r.jobs:
		case <-idle.C:
			return
		}
	}
}

// runnerPanic is a panic of a runner's goroutine, raised again on the
// caller's.
type runnerPanic struct {
	value any
	stack []byte
}

func (p *runnerPanic) Error() string {
	return fmt.Sprintf("%v\n\nstack of the goroutine that panicked:\n%s", p.value, p.stack)
}
