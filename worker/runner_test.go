package worker

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRunnerKeepsItsGoroutines(t *testing.T) {
	t.Parallel()
	r := newRunner()
	for range 5 {
		ran := false
		r.run(func() { ran = true })
		require.True(t, ran)
	}
	require.EqualValues(t, 1, r.started.Load(), "one goroutine ran the five calls one after another")
}

// TestRunnerNeverWaitsForABusyGoroutine checks that a call runs while every
// goroutine of the runner is busy: the waiting commands of a wallet keep
// theirs while the head they wait for runs.
func TestRunnerNeverWaitsForABusyGoroutine(t *testing.T) {
	t.Parallel()
	r := newRunner()
	release := make(chan struct{})
	first := make(chan struct{})
	go r.run(func() {
		close(first)
		<-release // waits for the second call, as a rider for its head
	})
	<-first
	done := make(chan struct{})
	go func() {
		r.run(func() { close(release) })
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the second call waited for the busy goroutine")
	}
	require.EqualValues(t, 2, r.started.Load())
}

func TestRunnerRaisesAPanicOnTheCaller(t *testing.T) {
	t.Parallel()
	r := newRunner()
	var got any
	func() {
		defer func() { got = recover() }()
		r.run(func() { panicsInHandling() })
	}()
	require.NotNil(t, got, "the panic reaches the caller")
	msg := fmt.Sprint(got)
	require.True(t, strings.HasPrefix(msg, "handling broke"), msg)
	require.Contains(t, msg, "panicsInHandling", "the stack of the goroutine that panicked comes along")
	ran := false
	r.run(func() { ran = true })
	require.True(t, ran, "the runner goes on after a panic")
}

func panicsInHandling() { panic("handling broke") }
