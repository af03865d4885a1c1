//go:build race

package e2e

// raceEnabled is true when the tests run with -race; the worker binary is
// then built with -race too, so that a data race in the worker fails them.
const raceEnabled = true
