package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
)

// clusterName is the name every node gives its cluster.
const clusterName = "wallets-e2e"

// node is one nats-server of the test cluster.
type node struct {
	name string
	url  string // client URL
	srv  *server.Server

	stopOnce sync.Once
	down     atomic.Bool
}

// shutdown stops the server and waits until it is gone. It may be called
// more than once.
func (n *node) shutdown() {
	n.stopOnce.Do(func() {
		n.down.Store(true)
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
	})
}

// testCluster is a JetStream cluster of nodes running in the test process.
type testCluster struct {
	nodes []*node
}

// othersThan names the nodes other than name.
func (c *testCluster) othersThan(name string) []string {
	var others []string
	for _, n := range c.nodes {
		if n.name != name {
			others = append(others, n.name)
		}
	}
	return others
}

// startCluster starts size nodes named n1…n<size>, each routed to all the
// others, and waits until the JetStream meta group has a leader that sees
// every node. The nodes are shut down at the end of the test.
func startCluster(t *testing.T, size int) *testCluster {
	t.Helper()
	ports := testutil.FreePorts(t, 2*size) // client ports, then cluster ports
	c := &testCluster{}
	for i := range size {
		var routes []string
		for j := range size {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[size+j]))
			}
		}
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       ports[i],
			Cluster: server.ClusterOpts{
				Name: clusterName,
				Host: "127.0.0.1",
				Port: ports[size+i],
			},
			Routes:    server.RoutesFromStr(strings.Join(routes, ",")),
			JetStream: true,
			StoreDir:  t.TempDir(),
			NoSigs:    true,
			NoLog:     true,
		}
		s, err := server.NewServer(opts)
		require.NoError(t, err, "server %s", opts.ServerName)
		n := &node{name: opts.ServerName, url: fmt.Sprintf("nats://127.0.0.1:%d", ports[i]), srv: s}
		c.nodes = append(c.nodes, n)
		t.Cleanup(n.shutdown)
		go s.Start()
	}
	for _, n := range c.nodes {
		require.True(t, n.srv.ReadyForConnections(10*time.Second), "%s accepts connections", n.name)
	}
	eventually(t, 30*time.Second, "a JetStream meta leader that sees every node", func() (bool, string) {
		var state []string
		ok := true
		for _, n := range c.nodes {
			leader, current := n.srv.JetStreamIsLeader(), n.srv.JetStreamIsCurrent()
			state = append(state, fmt.Sprintf("%s clustered=%v current=%v leader=%v", n.name, n.srv.JetStreamIsClustered(), current, leader))
			ok = ok && n.srv.JetStreamIsClustered() && current
			if leader {
				peers := n.srv.JetStreamClusterPeers()
				state = append(state, fmt.Sprintf("peers=%v", peers))
				ok = ok && len(peers) == size
			}
		}
		return ok && c.metaLeader() != nil, strings.Join(state, "; ")
	})
	return c
}

// metaLeader is the node leading the JetStream meta group, nil if none.
func (c *testCluster) metaLeader() *node {
	for _, n := range c.nodes {
		if !n.down.Load() && n.srv.JetStreamIsLeader() {
			return n
		}
	}
	return nil
}

func (c *testCluster) node(name string) *node {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// urls lists the client URLs of every node, those of the nodes named in
// first ahead of the others, in that order.
func (c *testCluster) urls(first ...string) []string {
	var head, tail []string
	for _, name := range first {
		if n := c.node(name); n != nil {
			head = append(head, n.url)
		}
	}
	for _, n := range c.nodes {
		if !slices.Contains(first, n.name) {
			tail = append(tail, n.url)
		}
	}
	return append(head, tail...)
}

// conn is a client connection to the cluster and what happened to it.
type conn struct {
	nc         *nats.Conn
	js         jetstream.JetStream
	reconnects atomic.Int64
	firstOn    string // the server it connected to first

	mu          sync.Mutex
	asyncErrors map[string]int // asynchronous errors by subscription and error
}

// asyncErrorSummary renders the asynchronous errors the connection reported
// (a slow consumer, a permission violation, …), "none" when there were none.
func (cn *conn) asyncErrorSummary() string {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if len(cn.asyncErrors) == 0 {
		return "none"
	}
	var parts []string
	for e, n := range cn.asyncErrors {
		parts = append(parts, fmt.Sprintf("%s ×%d", e, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// connect connects to the cluster with every node's URL, trying them in the
// order given by first (see urls), and reconnecting forever with a short
// wait, as a worker and a producer should.
func (c *testCluster) connect(t testing.TB, name string, first ...string) *conn {
	t.Helper()
	cn := &conn{asyncErrors: map[string]int{}}
	nc, err := nats.Connect(strings.Join(c.urls(first...), ","),
		nats.Name(name),
		nats.DontRandomize(),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond),
		nats.ReconnectJitter(0, 0),
		nats.ReconnectHandler(func(*nats.Conn) { cn.reconnects.Add(1) }),
		// Counted and reported by the test rather than printed to stderr.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			what := err.Error()
			if sub != nil {
				what += " on " + sub.Subject
			}
			cn.mu.Lock()
			cn.asyncErrors[what]++
			cn.mu.Unlock()
		}),
	)
	require.NoError(t, err, "connect %s", name)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	cn.nc, cn.js, cn.firstOn = nc, js, nc.ConnectedServerName()
	return cn
}

// streamInfo is the info of stream, as its leader reports it.
func streamInfo(ctx context.Context, js jetstream.JetStream, stream string) (*jetstream.StreamInfo, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	return s.Info(ctx)
}

// streamLeader is the server name of the leader of stream's Raft group.
func streamLeader(ctx context.Context, js jetstream.JetStream, stream string) (string, error) {
	si, err := streamInfo(ctx, js, stream)
	if err != nil {
		return "", err
	}
	if si.Cluster == nil || si.Cluster.Leader == "" {
		return "", errors.New("no leader")
	}
	return si.Cluster.Leader, nil
}

// consumerInfo is the info of a consumer of stream.
func consumerInfo(ctx context.Context, js jetstream.JetStream, stream, consumer string) (*jetstream.ConsumerInfo, error) {
	cons, err := js.Consumer(ctx, stream, consumer)
	if err != nil {
		return nil, err
	}
	return cons.Info(ctx)
}

// describeGroup renders a Raft group's leader and replicas.
func describeGroup(ci *jetstream.ClusterInfo) string {
	if ci == nil {
		return "no cluster info"
	}
	var peers []string
	for _, p := range ci.Replicas {
		peers = append(peers, fmt.Sprintf("%s(current=%v offline=%v lag=%d)", p.Name, p.Current, p.Offline, p.Lag))
	}
	return fmt.Sprintf("leader=%q replicas=[%s]", ci.Leader, strings.Join(peers, " "))
}

// eventually polls cond until it reports true, and fails the test with
// cond's last description when the deadline passes first.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	testutil.Eventually(t, timeout, what, cond)
}

// stepDownTo asks the leader of a Raft group to hand its leadership to the
// server named preferred (nats-server 2.11 or later). subject is the API
// subject of the group, $JS.API.STREAM.LEADER.STEPDOWN.<stream> or
// $JS.API.CONSUMER.LEADER.STEPDOWN.<stream>.<consumer>.
func stepDownTo(nc *nats.Conn, subject, preferred string) error {
	req, err := json.Marshal(map[string]any{"placement": map[string]string{"preferred": preferred}})
	if err != nil {
		return err
	}
	resp, err := nc.Request(subject, req, 5*time.Second)
	if err != nil {
		return err
	}
	var r struct {
		Success bool `json:"success"`
		Error   *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	if r.Error != nil {
		return fmt.Errorf("%s: %d/%d %s", subject, r.Error.Code, r.Error.ErrCode, r.Error.Description)
	}
	if !r.Success {
		return fmt.Errorf("%s: not a success: %s", subject, resp.Data)
	}
	return nil
}

// waitAllSettled waits until every stored command is settled: the work queue
// empty, nothing left to deliver, nothing awaiting an ack. It returns how many
// deliveries the consumer made; extra adds to the report of a wait that
// times out.
func waitAllSettled(t *testing.T, js jetstream.JetStream, within time.Duration, extra func() string) (deliveries uint64) {
	t.Helper()
	eventually(t, within, "every command settled", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		si, err := streamInfo(ctx, js, streamCommands)
		if err != nil {
			return false, err.Error()
		}
		ci, err := consumerInfo(ctx, js, streamCommands, consumerName)
		if err != nil {
			return false, err.Error()
		}
		deliveries = ci.Delivered.Consumer
		return si.State.Msgs == 0 && ci.NumPending == 0 && ci.NumAckPending == 0,
			fmt.Sprintf("%d commands left, %d not delivered, %d awaiting an ack, %d redelivered%s",
				si.State.Msgs, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, extra())
	})
	return deliveries
}
