package worker

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// waitIdle waits until n goroutines of the pool r wait for work.
func waitIdle(t *testing.T, r *pool, n int64) {
	t.Helper()
	require.Eventually(t, func() bool { return r.idleCount() == n }, 10*time.Second, time.Millisecond)
}

func TestPoolKeepsItsGoroutines(t *testing.T) {
	t.Parallel()
	r := newPool(4)
	for range 5 {
		ran := false
		r.run(func() { ran = true })
		require.True(t, ran)
		waitIdle(t, r, 1)
	}
	require.EqualValues(t, 1, r.startedCount(), "one goroutine ran the five calls one after another")
	r.stopIdle()
	waitIdle(t, r, 0)
}

// TestPoolNeverWaitsForABusyGoroutine checks that a call runs while every
// goroutine of the pool is busy: the waiting commands of a wallet keep
// theirs while the head they wait for runs.
func TestPoolNeverWaitsForABusyGoroutine(t *testing.T) {
	t.Parallel()
	r := newPool(4)
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
	require.EqualValues(t, 2, r.startedCount())
	waitIdle(t, r, 2)
}

// TestPoolKeepsAtMostMaxIdle checks that goroutines started for a burst
// do not all stay: at most maxIdle wait for work.
func TestPoolKeepsAtMostMaxIdle(t *testing.T) {
	t.Parallel()
	r := newPool(2)
	release := make(chan struct{})
	calls := make(chan struct{})
	for range 6 {
		go func() {
			r.run(func() { <-release })
			calls <- struct{}{}
		}()
	}
	require.Eventually(t, func() bool { return r.startedCount() == 6 }, 10*time.Second, time.Millisecond)
	close(release)
	for range 6 {
		<-calls
	}
	waitIdle(t, r, 2)
	time.Sleep(20 * time.Millisecond)
	require.EqualValues(t, 2, r.idleCount(), "the other four ended")
}

func TestPoolRaisesAPanicOnTheCaller(t *testing.T) {
	t.Parallel()
	r := newPool(4)
	var got any
	func() {
		defer func() { got = recover() }()
		r.run(func() { panicsInHandling() })
	}()
	require.NotNil(t, got, "the panic reaches the caller")
	msg := fmt.Sprint(got)
	require.True(t, strings.HasPrefix(msg, "handling broke"), msg)
	require.Contains(t, msg, "panicsInHandling", "the stack of the goroutine that panicked comes along")

	got = nil
	func() {
		defer func() { got = recover() }()
		r.run(runtime.Goexit)
	}()
	require.NotNil(t, got, "a Goexit is not a return")
	require.Contains(t, fmt.Sprint(got), "Goexit")

	ran := false
	r.run(func() { ran = true })
	require.True(t, ran, "the pool goes on after a panic")
}

func panicsInHandling() { panic("handling broke") }

// TestPoolGoDoesNotWait checks that goRun returns while f runs, and that its
// goroutine is kept for the next call.
func TestPoolGoDoesNotWait(t *testing.T) {
	t.Parallel()
	r := newPool(4)
	release := make(chan struct{})
	ran := make(chan struct{}, 2)
	r.goRun(func() { <-release; ran <- struct{}{} })
	close(release)
	<-ran
	waitIdle(t, r, 1)
	r.goRun(func() { ran <- struct{}{} })
	<-ran
	require.EqualValues(t, 1, r.startedCount(), "the second call ran on the kept goroutine")
}
