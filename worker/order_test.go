package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

// seqKind is a test kind whose commands carry their place in their wallet's
// line (n); applying one records it, so the order of application can be
// read back. Every command whose n is 3 mod 7 fails once, transiently.
type seqKind struct{ rec *applied }

type seqCmd struct {
	WalletID string `json:"walletID"`
	N        int    `json:"n"`
	rec      *applied
}

type applied struct {
	mu     sync.Mutex
	order  map[string][]int // by wallet, as applied
	failed map[string]bool
	total  int
}

func (seqKind) Name() string { return "seq" }

func (k seqKind) Decode(subject string, data []byte) (handlers.Command, error) {
	c := seqCmd{rec: k.rec}
	if err := json.Unmarshal(data, &c); err != nil {
		return c, err
	}
	return c, nil
}

func (seqKind) Reject(key, subject string, _ handlers.Command, code messages.Code, message string) handlers.Result {
	return pingResult{event: "seq-rejected", wallet: messages.WalletFromSubject(subject), code: code, reason: message,
		body: map[string]any{"key": key, "code": code}}
}

func (c seqCmd) Handle(context.Context, string) (handlers.Result, error) {
	time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
	id := fmt.Sprintf("%s/%d", c.WalletID, c.N)
	c.rec.mu.Lock()
	defer c.rec.mu.Unlock()
	if c.N%7 == 3 && !c.rec.failed[id] {
		c.rec.failed[id] = true
		return nil, &handlers.RetryError{Err: errors.New("first attempt fails")}
	}
	c.rec.order[c.WalletID] = append(c.rec.order[c.WalletID], c.N)
	c.rec.total++
	return pingResult{event: "seq-applied", wallet: c.WalletID, body: map[string]any{"n": c.N}}, nil
}

// runOrdered publishes wallets×perWallet interleaved commands to three
// workers and returns, by wallet, the order in which they were applied.
func runOrdered(t *testing.T, order Order, wallets, perWallet int) map[string][]int {
	rec := &applied{order: map[string][]int{}, failed: map[string]bool{}}
	kind := seqKind{rec: rec}
	configure := func(c *Config) { c.Order = order; c.Concurrency = 8 }
	b := setup(t, withKinds(kind), withConfig(configure))
	for range 2 {
		cfg := testConfig()
		configure(&cfg)
		w, err := New(b.js, handlers.NewKinds(kind), cfg, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})))
		require.NoError(t, err)
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		t.Cleanup(func() { stop(); <-done })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var acks []jetstream.PubAckFuture
	for n := range perWallet {
		for w := range wallets {
			wallet := fmt.Sprintf("w%d", w)
			f, err := b.js.PublishMsgAsync(kindMsg("seq", wallet, fmt.Sprintf("%s-%d", wallet, n), fmt.Sprintf(`{"walletID":%q,"n":%d}`, wallet, n)))
			require.NoError(t, err)
			acks = append(acks, f)
		}
	}
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatal("publish not acknowledged")
		}
	}
	require.Eventually(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.total >= wallets*perWallet
	}, time.Minute, 20*time.Millisecond)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.order
}

// TestOrderWithinAWallet: three workers, 30 wallets, 20 commands each
// published interleaved, random handling times and one command in seven
// failing once: every wallet's commands are applied in publish order, a
// failing one keeping its place through its retry, and each exactly once.
func TestOrderWithinAWallet(t *testing.T) {
	t.Parallel()
	got := runOrdered(t, OrderWallet, 30, 20)
	want := make([]int, 20)
	for i := range want {
		want[i] = i
	}
	require.Len(t, got, 30)
	for wallet, order := range got {
		require.Equal(t, want, order, "wallet %s applied out of publish order", wallet)
	}
}

// TestOrderNoneReorders: the same with --order none: commands of a wallet
// overtake one another (a retried one at least falls behind its successors),
// which is what TestOrderWithinAWallet would see if the line were broken.
func TestOrderNoneReorders(t *testing.T) {
	t.Parallel()
	got := runOrdered(t, OrderNone, 30, 20)
	outOfOrder := 0
	for _, order := range got {
		for i := 1; i < len(order); i++ {
			if order[i] < order[i-1] {
				outOfOrder++
				break
			}
		}
	}
	require.Positive(t, outOfOrder, "no wallet applied out of order without the line")
	t.Logf("%d of %d wallets applied out of publish order", outOfOrder, len(got))
}

// blockKind's commands block until released, except those with n > 0.
type blockKind struct{ release chan struct{} }

func (blockKind) Name() string { return "block" }
func (k blockKind) Decode(subject string, data []byte) (handlers.Command, error) {
	var c struct {
		N int `json:"n"`
	}
	err := json.Unmarshal(data, &c)
	return blockCmd{n: c.N, release: k.release, wallet: messages.WalletFromSubject(subject)}, err
}
func (blockKind) Reject(key, subject string, _ handlers.Command, code messages.Code, message string) handlers.Result {
	return pingResult{event: "block-rejected", wallet: messages.WalletFromSubject(subject), code: code, body: map[string]any{"key": key}}
}

type blockCmd struct {
	n       int
	wallet  string
	release chan struct{}
}

func (c blockCmd) Handle(ctx context.Context, _ string) (handlers.Result, error) {
	if c.n == 0 {
		select {
		case <-c.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return pingResult{event: "blocked", wallet: c.wallet, body: map[string]any{"n": c.n}}, nil
}

// TestDrainHandsBackWaiters: a worker that drains hands back at once the
// commands waiting for their wallet's line behind a head another worker
// holds, rather than keep them until its drain budget runs out.
func TestDrainHandsBackWaiters(t *testing.T) {
	t.Parallel()
	kind := blockKind{release: make(chan struct{})}
	defer close(kind.release)
	b := setup(t, withKinds(kind), withConfig(func(c *Config) { c.Concurrency = 1 }))
	b.publish(t, kindMsg("block", "w1", "k0", `{"n":0}`)) // the head, held by b's worker in its slot
	b.publish(t, kindMsg("block", "w2", "kx", `{"n":0}`)) // queued there: b's worker has no room left
	require.Eventually(t, func() bool { return b.consumerInfo(t).NumAckPending == 2 }, 5*time.Second, 10*time.Millisecond)

	cfg := testConfig()
	w, err := New(b.js, handlers.NewKinds(kind), cfg, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	b.publish(t, kindMsg("block", "w1", "k1", `{"n":1}`)) // waits behind k0, in the second worker
	require.Eventually(t, func() bool { return w.Stats().OrderWaits.Load() == 1 }, 5*time.Second, 10*time.Millisecond)

	stop()
	start := time.Now()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(cfg.DrainTimeout + 2*time.Second):
		t.Fatal("Run did not return")
	}
	require.Less(t, time.Since(start), cfg.DrainTimeout/2, "the drain waited for the waiter")
	require.GreaterOrEqual(t, w.Stats().HandedBack.Load(), int64(1), "the waiter was handed back")
}

// TestOrderNeedsItsGrant: a worker whose NATS user may not read the
// commands stream's messages (an authorization from before --order) fails
// at start, naming the grant and --order none, rather than let every
// command wait a whole ack wait.
func TestOrderNeedsItsGrant(t *testing.T) {
	t.Parallel()
	_, js, w := deniedWorker(t, "$JS.API.STREAM.MSG.GET.>", "$JS.API.DIRECT.GET.WALLETS_COMMANDS")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := w.Run(ctx)
	require.ErrorContains(t, err, "$JS.API.STREAM.MSG.GET.WALLETS_COMMANDS")
	require.ErrorContains(t, err, "$JS.API.DIRECT.GET.WALLETS_COMMANDS")
	require.ErrorContains(t, err, "--order none")

	cfg := testConfig()
	cfg.Order = OrderNone // without the line, the grant is not needed
	w, err = New(js, handlers.NewKinds(pingKind{}), cfg, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	runCtx, stop := context.WithTimeout(context.Background(), time.Second)
	defer stop()
	require.NoError(t, w.Run(runCtx))
}

// TestWaiterGetsASlotBackWhenIdle: a worker of one slot whose only command
// waits for its wallet's line (the head at another worker) applies it once
// the head settles, though nothing else arrives. Its dispatcher holds the
// one slot while it waits for commands, so a command of a one-slot worker
// keeps its slot rather than step aside and never get it back.
func TestWaiterGetsASlotBackWhenIdle(t *testing.T) {
	t.Parallel()
	kind := blockKind{release: make(chan struct{})}
	b := setup(t, withKinds(kind), withConfig(func(c *Config) { c.Concurrency = 1 }))
	b.publish(t, kindMsg("block", "w1", "k0", `{"n":0}`)) // the head, held by b's worker in its slot
	b.publish(t, kindMsg("block", "w2", "kx", `{"n":2}`)) // queued there: b's worker has no room left
	require.Eventually(t, func() bool { return b.consumerInfo(t).NumAckPending == 2 }, 5*time.Second, 10*time.Millisecond)

	cfg := testConfig()
	cfg.Concurrency = 1
	w, err := New(b.js, handlers.NewKinds(kind), cfg, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { stop(); <-done }()
	b.publish(t, kindMsg("block", "w1", "k1", `{"n":1}`)) // waits behind k0, in w
	require.Eventually(t, func() bool { return w.Stats().OrderWaits.Load() == 1 }, 5*time.Second, 10*time.Millisecond)

	close(kind.release) // k0 settles at b's worker
	require.Eventually(t, func() bool { return w.Stats().Created.Load()+b.worker.Stats().Created.Load() == 3 },
		cfg.AckWait, 10*time.Millisecond, "k1 was not applied once k0 settled")
	require.Equal(t, int64(1), w.Stats().Created.Load(), "k1 applied by the worker that waited")
}

// TestOrderReadsDirectlyOnOneReplica: provisioned with one replica, the
// commands stream allows direct gets and the order check uses them, so a
// worker whose user may not use the JetStream API's message get still
// starts and orders; a replicated stream that allows them is refused, as a
// lagging replica could answer the check wrongly.
func TestOrderReadsDirectlyOnOneReplica(t *testing.T) {
	t.Parallel()
	for _, sc := range (Config{StreamReplicas: 1}).StreamConfigs() {
		require.Equal(t, sc.Name == messages.StreamCommands, sc.AllowDirect, sc.Name)
	}
	for _, sc := range (Config{StreamReplicas: 3}).StreamConfigs() {
		require.False(t, sc.AllowDirect, "%s at R3", sc.Name)
	}
	require.NoError(t, directReadable(jetstream.StreamConfig{Name: messages.StreamCommands, Replicas: 1, AllowDirect: true}))
	require.NoError(t, directReadable(jetstream.StreamConfig{Name: messages.StreamCommands, Replicas: 3}))
	err := directReadable(jetstream.StreamConfig{Name: messages.StreamCommands, Replicas: 3, AllowDirect: true})
	require.ErrorContains(t, err, "allows direct gets with 3 replicas")
	require.ErrorContains(t, err, "--order none")

	admin, js, w := deniedWorker(t, "$JS.API.STREAM.MSG.GET.WALLETS_COMMANDS")
	l := newLine(OrderWallet, js, time.Second, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = admin.PublishMsg(ctx, kindMsg("seq", "wd", "wd-1", `{"walletID":"wd","n":1}`))
	require.NoError(t, err)
	head, err := l.head(ctx, "wd")
	require.NoError(t, err, "the head read directly, without the message get")
	require.Positive(t, head)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(rctx) }()
	time.Sleep(500 * time.Millisecond)
	stop()
	require.NoError(t, <-done, "the worker started: its start probe read the head directly")
}

// TestOrderTakesTheStreamAgainAfterItChanged: a worker's stream handle
// remembers whether the stream allowed direct gets. Once direct gets are
// turned off under it (as provision does when the stream is scaled to three
// replicas), a get by the old handle finds no responder; the order check then
// takes the handle again and asks by the JetStream API's message get.
func TestOrderTakesTheStreamAgainAfterItChanged(t *testing.T) {
	t.Parallel()
	admin, js, _ := deniedWorker(t, "nothing.denied")
	l := newLine(OrderWallet, js, time.Second, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ack, err := admin.PublishMsg(ctx, kindMsg("seq", "wc", "wc-1", `{"walletID":"wc","n":1}`))
	require.NoError(t, err)
	head, err := l.head(ctx, "wc")
	require.NoError(t, err)
	require.Equal(t, ack.Sequence, head)

	s, err := admin.Stream(ctx, messages.StreamCommands)
	require.NoError(t, err)
	sc := s.CachedInfo().Config
	require.True(t, sc.AllowDirect, "provisioned on one replica")
	sc.AllowDirect = false
	_, err = admin.UpdateStream(ctx, sc)
	require.NoError(t, err)

	head, err = l.head(ctx, "wc")
	require.NoError(t, err, "the head asked again with a handle taken after the change")
	require.Equal(t, ack.Sequence, head)
}

// TestOrderAsksForARefusedStreamOnceASecond: when the commands stream cannot
// be taken (refused by directReadable, or unreadable), the order checks that
// follow get that answer for a second without each asking the stream again.
func TestOrderAsksForARefusedStreamOnceASecond(t *testing.T) {
	t.Parallel()
	l := newLine(OrderWallet, nil, time.Second, time.Minute)
	refused := errors.New("refused")
	var calls atomic.Int32
	l.stream = func(context.Context) (jetstream.Stream, error) {
		calls.Add(1)
		return nil, refused
	}
	start := time.Now()
	for range 100 {
		_, err := l.head(context.Background(), "w")
		require.ErrorIs(t, err, refused)
	}
	if time.Since(start) < lineStreamRetry {
		require.Equal(t, int32(1), calls.Load(), "the stream was asked once")
	}
	require.Eventually(t, func() bool {
		_, _ = l.head(context.Background(), "w")
		return calls.Load() == 2
	}, 10*time.Second, 50*time.Millisecond, "and asked again after lineStreamRetry")
}

// TestStoredOutcomeNeedsItsGrant: a worker that may not read the events
// stream's newest event of a wallet would make each redelivery wait for
// nothing; it refuses to start, naming the grant.
func TestStoredOutcomeNeedsItsGrant(t *testing.T) {
	t.Parallel()
	_, _, w := deniedWorker(t, "$JS.API.STREAM.MSG.GET.WALLETS_EVENTS")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.ErrorContains(t, w.Run(ctx), "$JS.API.STREAM.MSG.GET.WALLETS_EVENTS")
}

// deniedWorker provisions the streams as an admin user on a new server, and
// makes a worker (of pingKind) whose NATS user may publish anything but the
// subjects denied.
func deniedWorker(t *testing.T, deny ...string) (admin, js jetstream.JetStream, w *Worker) {
	t.Helper()
	ns := testutil.NATSServer(t, &server.Options{JetStream: true, Users: []*server.User{
		{Username: "admin", Password: "admin-pw"},
		{Username: "worker", Password: "worker-pw", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: deny},
		}},
	}})
	_, admin = testutil.Connect(t, ns.ClientURL(), nats.UserInfo("admin", "admin-pw"))
	require.NoError(t, Provision(context.Background(), admin, testConfig()))
	_, js = testutil.Connect(t, ns.ClientURL(), nats.UserInfo("worker", "worker-pw"))
	w, err := New(js, handlers.NewKinds(pingKind{}), testConfig(), slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	return admin, js, w
}

// TestWaitersKeepTheirDeliveriesBehindALongRetry: the head of a wallet's
// line fails once and waits for its retry six ack waits away; the five
// commands behind it wait for it in the worker, aside, rather than be
// handed back every ack wait. Handed back, each would spend a delivery per
// ack wait, reach --max-deliver behind a command that keeps its place, and
// be dead-lettered as RETRIES_EXHAUSTED without a single failure (and the
// last of them would then go ahead of the head).
func TestWaitersKeepTheirDeliveriesBehindALongRetry(t *testing.T) {
	t.Parallel()
	rec := &applied{order: map[string][]int{}, failed: map[string]bool{}}
	kind := seqKind{rec: rec} // n = 3 fails once
	b := setup(t, withKinds(kind), withConfig(func(c *Config) {
		c.AckWait = 2 * time.Second
		c.MaxDeliver = 3
		c.Backoff = Backoff{Initial: 12 * time.Second, Max: 12 * time.Second}
	}))
	for n := 3; n <= 8; n++ {
		b.publish(t, kindMsg("seq", "w0", fmt.Sprintf("w0-%d", n), fmt.Sprintf(`{"walletID":"w0","n":%d}`, n)))
	}
	st := b.worker.Stats()
	require.Eventually(t, func() bool { return st.Created.Load()+st.Rejected.Load() == 6 },
		30*time.Second, 20*time.Millisecond, "not every command was settled")
	require.Zero(t, st.Rejected.Load(), "a command behind the retry was rejected")
	rec.mu.Lock()
	require.Equal(t, []int{3, 4, 5, 6, 7, 8}, rec.order["w0"])
	rec.mu.Unlock()
	require.Equal(t, int64(1), st.Retried.Load(), "one retry, the head's: none of the commands behind it was handed back")
	require.Equal(t, uint64(7), b.deliveries(t), "six commands, one retry: seven deliveries")
}

// TestWaitersBehindAStrandedHeadAreHandedBack: a head JetStream will never
// deliver again (past the consumer's max deliveries, its every settle
// failed) blocks its wallet's line for good. The commands behind it wait
// aside longer than a live head could keep its place, and are then handed
// back, which past their own budget dead-letters them, rather than wait
// forever.
func TestWaitersBehindAStrandedHeadAreHandedBack(t *testing.T) {
	t.Parallel()
	rec := &applied{order: map[string][]int{}, failed: map[string]bool{}}
	kind := seqKind{rec: rec} // n = 3 fails once
	const headKey = "w0-3"
	b := setup(t, withKinds(kind), withConfig(func(c *Config) {
		c.AckWait = time.Second
		c.MaxDeliver = 1
		c.Backoff = Backoff{Initial: 50 * time.Millisecond, Max: 50 * time.Millisecond}
	}), withHooks(func(b *bundle) hooks {
		return hooks{publish: func(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error) {
			if m.Header.Get(messages.HeaderMsgID) == headKey {
				return nil, errors.New("injected: the head's dead letter is never stored")
			}
			return b.js.PublishMsg(ctx, m)
		}}
	}))
	asideWait := b.worker.cfg.lineAsideWait()
	require.Equal(t, 6*time.Second, asideWait, "no retry budget at --max-deliver 1, and six ack waits")
	start := time.Now()
	for n := 3; n <= 5; n++ {
		b.publish(t, kindMsg("seq", "w0", fmt.Sprintf("w0-%d", n), fmt.Sprintf(`{"walletID":"w0","n":%d}`, n)))
	}
	st := b.worker.Stats()
	require.Eventually(t, func() bool { return st.DeadLettered.Load() == 2 }, asideWait+10*time.Second, 20*time.Millisecond,
		"the commands behind the stranded head were not dead-lettered")
	require.GreaterOrEqual(t, time.Since(start), asideWait, "handed back before a live head's time was up")
	rec.mu.Lock()
	require.Empty(t, rec.order["w0"], "a command went ahead of its head")
	rec.mu.Unlock()
	require.EqualValues(t, 1, b.commandsLeft(t), "the stranded head stays in the stream")
	for _, dl := range b.dlq.all() {
		require.Equal(t, []string{"RETRIES_EXHAUSTED"}, dl.Header["Wallets-Dlq-Code"])
		require.NotEqual(t, headKey, dl.Header.Get(messages.HeaderMsgID))
	}
}

// A panic while a command waits for its turn (in a hook of the wait: a log,
// a span, a metric) leaves the line all the same: else every later command
// of the wallet in this process would wait behind it and never ask the
// stream.
func TestAPanicInTheWaitLeavesTheLine(t *testing.T) {
	t.Parallel()
	admin, js, _ := deniedWorker(t, "nothing.denied")
	l := newLine(OrderWallet, js, time.Second, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var seqs []uint64
	for i := range 2 {
		ack, err := admin.PublishMsg(ctx, kindMsg("seq", "wp", fmt.Sprintf("wp-%d", i), `{"walletID":"wp"}`))
		require.NoError(t, err)
		seqs = append(seqs, ack.Sequence)
	}
	wt := newWaiter(&delivery{seq: seqs[1]}, nil, "wp-1")
	require.Panics(t, func() {
		_, _ = l.await(ctx, wt, "wp", func(uint64) { panic("injected") })
	})
	require.False(t, l.behind("wp", seqs[1]+1), "the panicked waiter left the line")
}
