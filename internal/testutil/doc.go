// Package testutil is the one home of the set-ups the tests of every package
// share: the real nats-server with JetStream in the test process (NATS,
// NATSWith, Connect), the embedded ledger behind an httptest server
// (StartLedger), free ports (FreeAddr, FreePorts), a buffer safe for
// concurrent writers (SyncBuffer), waiting on a condition with a deadline
// (Eventually) and building the wallets-worker binary (BuildWorker).
//
// Everything a helper starts is stopped by a t.Cleanup, and every file it
// writes lives in a t.TempDir(). It is imported by tests only; it imports no
// package whose tests import it (worker, handlers, internal/cli, producer).
package testutil
