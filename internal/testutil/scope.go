package testutil

import (
	"fmt"
	"os"
	"sync"
)

// T is what the helpers need of a test. *testing.T and *testing.B have it,
// and so does a Scope, for code that runs without one (an Example).
type T interface {
	Helper()
	Cleanup(func())
	TempDir() string
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	FailNow()
}

// Scope is a T for an Example: Close runs the cleanups, last first, and
// removes the temporary directories; a failure panics, as an Example has no
// other way to fail. The zero value is ready.
type Scope struct {
	mu       sync.Mutex
	cleanups []func()
}

// Helper does nothing: there is no test to report lines to.
func (s *Scope) Helper() {}

// Cleanup registers f to run at Close.
func (s *Scope) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, f)
}

// TempDir returns a new directory, removed at Close.
func (s *Scope) TempDir() string {
	dir, err := os.MkdirTemp("", "wallets-worker-example-")
	if err != nil {
		panic(err)
	}
	s.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// Errorf panics with the message.
func (s *Scope) Errorf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }

// Fatalf panics with the message.
func (s *Scope) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }

// FailNow panics.
func (s *Scope) FailNow() { panic("testutil: scope failed") }

// Close runs the cleanups, last registered first.
func (s *Scope) Close() {
	s.mu.Lock()
	cs := s.cleanups
	s.cleanups = nil
	s.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}
