// Package e2e tests the wallets-worker binary from the outside, as an operator
// runs it: it builds ./cmd/wallets-worker once, runs it as a child process
// against a NATS server and a ledger that outlive it (or in its all-embedded
// mode), publishes commands with the NATS client, SIGKILLs, SIGTERMs and
// restarts it, and checks SPEC §1's promise on what is left in JetStream and
// in the ledger: every stored command has exactly one outcome event, no
// ledger write is applied twice, nothing is lost.
//
// The package holds tests only. They speak the wire names of SPEC §3 and §4
// literally rather than importing them, so that a rename inside the module
// breaks them as it would break a producer. Counts and seeds are flags:
//
//	go test -race ./e2e/ -args -e2e.commands=5000 -e2e.kills=10 -e2e.seed=42
//
// Each test logs a figures line and prints it to stdout, e.g.
//
//	crash: commands=2200 stored=2000 kills=5 duplicates=200 deduped=200 conflicts=100 outcomes=2000 lost=0 doubled=0 replayed=33 ledger_logs=1900 elapsed=7.6s
//
// The tests need a Unix system (process groups, signals).
package e2e
