// Package cluster tests the worker against a three-node JetStream cluster that
// loses a leader while it works.
//
// TestClusterLeaderLoss starts three nats-server nodes in the test process
// (routes between them, JetStream on each, one store directory per node),
// provisions the streams, the consumer and the claims bucket with
// StreamReplicas 3, runs two in-process workers on their own connections to
// all three servers against one embedded ledger, and publishes a load with
// duplicates, conflicting keys, keys racing for one fresh balance and a few
// invalid commands. Midway it shuts down the server leading WALLETS_COMMANDS
// and keeps publishing, retrying with the same key every publish that failed
// during the election. It then checks SPEC §1's promise: every stored command
// (every distinct PubAck sequence) has exactly one outcome event, every
// balance is written exactly once in the ledger, the work queue is empty and
// the only dead letters are the invalid commands.
//
// The package holds tests only. Like ../e2e it checks the wire names of SPEC
// §3 and §4 spelled out literally; it imports worker, handlers and the ledger
// packages only to wire the workers. Sizes and seed are flags:
//
//	go test -race ./e2e/cluster/ -args -cluster.commands=2000 -cluster.seed=42
//
// The test prints one "figures" line to stdout, e.g.
//
//	cluster: commands=1000 stored=940 leader_lost=n2 outcomes=940 lost=0 doubled=0 elapsed=25.1s
package cluster
