// Package natsauth_test runs the real nats-server, in process, from a
// configuration that includes deploy/nats/auth.conf, and shows that each user
// it defines can do its job and nothing more: the worker, the producer and the
// operator each run the project's own code (`wallets-worker run`, the producer
// package, `publish`, `dlq`, `provision`) without a single permission
// violation, and each thing a user must not do is tried and refused.
package natsauth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/cli"
	"github.com/wallets-worker/wallets-worker/internal/natsconn"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/producer"
	"github.com/wallets-worker/wallets-worker/worker"
)

// The users of auth.conf, their passwords (set in TestMain, where nats-server
// reads them) and the inbox prefixes the file gives them.
const (
	userWorker   = "wallets-worker"
	userProducer = "wallets-producer"
	userOperator = "wallets-operator"

	inboxWorker   = "_INBOX_wallets_worker"
	inboxProducer = "_INBOX_wallets_producer"
	inboxOperator = "_INBOX_wallets_operator"
)

var passwords = map[string]string{
	userWorker:   "wk7f3c9a1e",
	userProducer: "pr2b8d4f6a",
	userOperator: "op5e1a7c3b",
}

var passwordEnv = map[string]string{
	userWorker:   "WALLETS_NATS_WORKER_PASSWORD",
	userProducer: "WALLETS_NATS_PRODUCER_PASSWORD",
	userOperator: "WALLETS_NATS_OPERATOR_PASSWORD",
}

// nkeySeeds are the users' NKey seeds for TestNKeys; TestMain puts their
// public keys in WALLETS_NATS_*_NKEY.
var nkeySeeds = map[string][]byte{}

func TestMain(m *testing.M) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for user, env := range passwordEnv {
		if err := os.Setenv(env, passwords[user]); err != nil {
			fail(err)
		}
		kp, err := nkeys.CreateUser()
		if err != nil {
			fail(err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			fail(err)
		}
		if nkeySeeds[user], err = kp.Seed(); err != nil {
			fail(err)
		}
		if err := os.Setenv(strings.TrimSuffix(env, "_PASSWORD")+"_NKEY", pub); err != nil {
			fail(err)
		}
	}
	os.Exit(m.Run())
}

// authConf is the file under test.
func authConf(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("auth.conf")
	require.NoError(t, err)
	return p
}

// withoutProvisioning is auth.conf with the worker's provisioning lines
// deleted, as docs/nats-authorization.md tells operators to do for workers
// that run with --no-provision.
func withoutProvisioning(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(authConf(t))
	require.NoError(t, err)
	block := regexp.MustCompile(`(?s)\n[ \t]*# provisioning: begin.*?# provisioning: end[^\n]*`)
	require.Len(t, block.FindAll(b, -1), 1, "auth.conf marks the worker's provisioning lines once")
	p := filepath.Join(t.TempDir(), "auth-bound.conf")
	require.NoError(t, os.WriteFile(p, block.ReplaceAll(b, nil), 0o600))
	return p
}

// violations records what the server logs about refused publishes and
// subscriptions.
type violations struct {
	mu    sync.Mutex
	lines []string
}

func (v *violations) record(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	if strings.Contains(line, "Violation") {
		v.mu.Lock()
		v.lines = append(v.lines, line)
		v.mu.Unlock()
	}
}

func (v *violations) Noticef(format string, args ...any) { v.record(format, args...) }
func (v *violations) Warnf(format string, args ...any)   { v.record(format, args...) }
func (v *violations) Fatalf(format string, args ...any)  { v.record(format, args...) }
func (v *violations) Errorf(format string, args ...any)  { v.record(format, args...) }
func (v *violations) Debugf(format string, args ...any)  {}
func (v *violations) Tracef(format string, args ...any)  {}

func (v *violations) all() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.lines...)
}

// natsServer is a running nats-server and what it logged.
type natsServer struct {
	*server.Server
	violations *violations
	conf       string
}

// startServer starts nats-server from a configuration file that enables
// JetStream and includes auth, exactly as an operator's would.
func startServer(t *testing.T, auth string) *natsServer {
	t.Helper()
	return startServerWith(t, auth, "")
}

// startServerWith is startServer with more of the server's configuration
// (feature flags, say).
func startServerWith(t *testing.T, auth, extra string) *natsServer {
	t.Helper()
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, auth) // include paths are relative to the including file
	require.NoError(t, err)
	conf := fmt.Sprintf("listen: \"127.0.0.1:-1\"\nserver_name: auth-test\n%s\njetstream {\n  store_dir: %q\n}\ninclude %q\n",
		extra, filepath.Join(dir, "jetstream"), rel)
	s := &natsServer{violations: &violations{}, conf: filepath.Join(dir, "nats-server.conf")}
	require.NoError(t, os.WriteFile(s.conf, []byte(conf), 0o600))
	s.start(t, -1)
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

func (s *natsServer) start(t *testing.T, port int) {
	t.Helper()
	opts, err := server.ProcessConfigFile(s.conf)
	require.NoError(t, err)
	opts.NoSigs, opts.Port = true, port
	ns, err := server.NewServer(opts)
	require.NoError(t, err)
	ns.SetLoggerV2(s.violations, false, false, false)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second), "nats-server not ready")
	s.Server = ns
}

// restart stops the server and starts it again on the same port and store.
func (s *natsServer) restart(t *testing.T) {
	t.Helper()
	port := s.Addr().(*net.TCPAddr).Port
	s.Shutdown()
	s.WaitForShutdown()
	s.start(t, port)
}

// requireNoViolations fails if the server refused anything.
func (s *natsServer) requireNoViolations(t *testing.T) {
	t.Helper()
	require.Empty(t, s.violations.all(), "permission violations: auth.conf misses what these lines name")
}

// client is a connection as one user, with the permission errors the server
// sent it.
type client struct {
	*nats.Conn
	js     jetstream.JetStream
	mu     sync.Mutex
	denied []string
}

func connect(t *testing.T, s *natsServer, user, inbox string) *client {
	t.Helper()
	return connectWith(t, s, nats.UserInfo(user, passwords[user]), inbox)
}

func connectWith(t *testing.T, s *natsServer, auth nats.Option, inbox string) *client {
	t.Helper()
	c := &client{}
	opts := []nats.Option{
		auth,
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				c.mu.Lock()
				c.denied = append(c.denied, err.Error())
				c.mu.Unlock()
			}
		}),
	}
	if inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(inbox))
	}
	nc, err := nats.Connect(s.ClientURL(), opts...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	c.Conn = nc
	c.js, err = jetstream.New(nc)
	require.NoError(t, err)
	return c
}

// requireDenied waits for the server to tell c that what (e.g. `Publish to
// "x"`) was refused.
func (c *client) requireDenied(t *testing.T, what string) {
	t.Helper()
	want := "Permissions Violation for " + what
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, d := range c.denied {
			if strings.Contains(d, want) {
				return true
			}
		}
		return false
	}, 10*time.Second, 10*time.Millisecond, "the server did not refuse: %s", want)
}

// requirePublishDenied publishes to subject and requires the refusal.
func (c *client) requirePublishDenied(t *testing.T, subject string) {
	t.Helper()
	require.NoError(t, c.Publish(subject, []byte(`{}`)))
	require.NoError(t, c.Flush())
	c.requireDenied(t, fmt.Sprintf("Publish to %q", subject))
}

// requireSubscribeDenied subscribes to subject and requires the refusal.
func (c *client) requireSubscribeDenied(t *testing.T, subject string) {
	t.Helper()
	sub, err := c.SubscribeSync(subject)
	require.NoError(t, err) // the refusal comes asynchronously
	require.NoError(t, c.Flush())
	c.requireDenied(t, fmt.Sprintf("Subscription to %q", subject))
	_ = sub.Unsubscribe()
}

// requireAPIDenied runs a JetStream API call that must be refused: it fails
// (no answer comes) and the server names its subject.
func (c *client) requireAPIDenied(t *testing.T, subject string, call func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	require.Error(t, call(ctx), "%s answered", subject)
	c.requireDenied(t, fmt.Sprintf("Publish to %q", subject))
}

// env is the environment of an in-process command: the users' passwords as
// the WALLETS_WORKER_* variables a deployment would set.
func env(user string, extra map[string]string) func(string) string {
	vars := map[string]string{
		cli.EnvName("nats-user"):     user,
		cli.EnvName("nats-password"): passwords[user],
	}
	for k, v := range extra {
		vars[k] = v
	}
	return func(k string) string { return vars[k] }
}

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer = testutil.SyncBuffer

// runWorker runs `wallets-worker run` in process as the worker user, with the
// embedded ledger, until the test ends.
func runWorker(t *testing.T, s *natsServer, args ...string) *syncBuffer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	ready := make(chan struct{})
	done := make(chan int, 1)
	args = append([]string{"run", "--nats-url", s.ClientURL(), "--data-dir", t.TempDir(),
		"--embedded-ledger-addr", "127.0.0.1:0", "--http-addr", "", "--log-level", "debug"}, args...)
	go func() {
		done <- cli.Main(ctx, args, cli.Env{Stderr: logs, Getenv: env(userWorker, nil), Ready: func(cli.Addrs) { close(ready) }})
	}()
	select {
	case <-ready:
	case code := <-done:
		cancel()
		t.Fatalf("run exited with %d before it was ready:\n%s", code, logs)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("run not ready within 30s:\n%s", logs)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			require.Equal(t, cli.ExitOK, code, "run's exit status; logs:\n%s", logs)
		case <-time.After(40 * time.Second):
			t.Errorf("run did not stop within 40s")
		}
	})
	return logs
}

// command runs a wallets-worker command in process as user.
func command(t *testing.T, user string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = cli.Main(context.Background(), args, cli.Env{Stdout: &out, Stderr: &errOut, Getenv: env(user, nil)})
	return code, out.String(), errOut.String()
}

func decodeLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	dec := json.NewDecoder(strings.NewReader(s))
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if err == io.EOF {
			return out
		}
		require.NoError(t, err, "output %q", s)
		out = append(out, m)
	}
}

// provision provisions as the operator, with `wallets-worker provision`.
func provision(t *testing.T, s *natsServer) {
	t.Helper()
	code, _, errOut := command(t, userOperator, "provision", "--nats-url", s.ClientURL(), "--nats-inbox-prefix", inboxOperator)
	require.Equal(t, cli.ExitOK, code, errOut)
}

// TestWorkerProducerOperator: under auth.conf the worker provisions and
// consumes, producers publish and await outcomes (library and command line,
// outcomes published before the wait included), the claims bucket works, and
// the operator lists and redrives dead letters, with no permission violation
// anywhere: every subject they use is granted.
func TestWorkerProducerOperator(t *testing.T) {
	t.Parallel()
	s := startServer(t, authConf(t))
	wlogs := runWorker(t, s, "--duplicate-window", "1s")
	defer func() {
		if t.Failed() {
			t.Log("worker logs:\n" + wlogs.String())
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	pc := connect(t, s, userProducer, inboxProducer)
	p := producer.New(pc.js)

	// Publish, then Await (the event may be stored before the wait).
	ack, err := p.Publish(ctx, messages.CreateBalance{WalletID: "w1", Name: "savings", Priority: 2}, "k-w1")
	require.NoError(t, err)
	o, err := p.Await(ctx, "w1", ack.Seq)
	require.NoError(t, err)
	require.NotNil(t, o.Created, "%+v", o.Rejected)
	require.False(t, o.Created.Replayed)

	// Another key for the same balance: a rejection event.
	ack, err = p.Publish(ctx, messages.CreateBalance{WalletID: "w1", Name: "savings", Priority: 2}, "k-w1-other")
	require.NoError(t, err)
	o, err = p.AwaitKey(ctx, "w1", "k-w1-other")
	require.NoError(t, err)
	require.NotNil(t, o.Rejected)
	require.Equal(t, messages.CodeAlreadyExists, o.Rejected.Code)
	require.Equal(t, ack.Seq, o.CommandSeq)

	// Many at once with an Awaiter.
	aw, err := producer.NewAwaiter(ctx, pc.js)
	require.NoError(t, err)
	defer aw.Stop()
	var seqs []uint64
	for i := range 5 {
		ack, err := p.Publish(ctx, messages.CreateBalance{WalletID: fmt.Sprintf("m%d", i), Name: "main-pot"}, fmt.Sprintf("k-m%d", i))
		require.NoError(t, err)
		seqs = append(seqs, ack.Seq)
	}
	outs, err := aw.AwaitMany(ctx, seqs)
	require.NoError(t, err)
	for i, o := range outs {
		require.NotNil(t, o.Created, "command %d: %+v", i, o.Rejected)
	}

	// The command line, as a producer: publish --wait, then the same
	// command again, whose outcome was stored before this wait began.
	pub := []string{"publish", "create-balance", "--nats-url", s.ClientURL(), "--nats-inbox-prefix", inboxProducer,
		"--wallet", "w2", "--name", "gift", "--key", "k-w2", "--wait", "--timeout", "30s"}
	for range 2 {
		code, out, errOut := command(t, userProducer, pub...)
		require.Equal(t, cli.ExitOK, code, errOut)
		lines := decodeLines(t, out)
		require.Len(t, lines, 2)
		require.Equal(t, "balance-created", lines[1]["type"])
	}

	// The same key for another command, inside the duplicate window: the
	// publisher finds the original's outcome and says KEY_REUSED.
	code, out, errOut := command(t, userProducer, "publish", "create-balance", "--nats-url", s.ClientURL(), "--nats-inbox-prefix", inboxProducer,
		"--wallet", "w2", "--name", "other", "--key", "k-w2", "--wait", "--timeout", "30s")
	require.Equal(t, cli.ExitRejected, code, errOut)
	lines := decodeLines(t, out)
	require.Len(t, lines, 2)
	require.Equal(t, string(messages.CodeKeyReused), lines[1]["event"].(map[string]any)["code"])

	// A command of another kind, published twice at once and once more
	// with another amount under its key: the duplicates are judged by the
	// producer with what its user may read.
	credit := func(amount int) producer.CommandAck {
		c, err := producer.NewCommand(messages.KindCreditWallet, "", fmt.Appendf(nil, `{"walletID":"w9","amount":{"asset":"USD/2","amount":%d}}`, amount), "k-c9")
		require.NoError(t, err)
		ack, err := p.PublishCommand(ctx, c, "k-c9")
		require.NoError(t, err)
		return ack
	}
	first, again, other := credit(100), credit(100), credit(7)
	require.True(t, again.Duplicate && other.Duplicate, "within the 1s window: %+v %+v", again, other)
	e, err := p.AwaitCommand(ctx, first)
	require.NoError(t, err)
	require.Equal(t, messages.EventWalletCredited, e.Name)
	e, err = p.AwaitCommand(ctx, again)
	require.NoError(t, err, "a duplicate of the same command")
	require.Equal(t, messages.EventWalletCredited, e.Name)
	e, err = p.AwaitCommand(ctx, other)
	require.NoError(t, err, "a duplicate of another command")
	require.Equal(t, messages.CodeKeyReused, e.Code)

	// An invalid command is dead-lettered by the worker.
	bad := &nats.Msg{Subject: messages.CreateBalanceSubject("w3"), Data: []byte(`{"walletID":"w3","name":"x","colour":"red"}`), Header: nats.Header{}}
	bad.Header.Set(messages.HeaderMsgID, "k-bad")
	ack2, err := pc.js.PublishMsg(ctx, bad)
	require.NoError(t, err)
	o, err = p.Await(ctx, "w3", ack2.Sequence)
	require.NoError(t, err)
	require.NotNil(t, o.Rejected)
	require.Equal(t, messages.CodeInvalidCommand, o.Rejected.Code)

	// The operator lists it and redrives it (once the 1s duplicate window
	// let the key through), deleting the dead letter.
	dlq := []string{"dlq", "--nats-url", s.ClientURL(), "--nats-inbox-prefix", inboxOperator}
	code, out, errOut = command(t, userOperator, append([]string{"dlq", "list"}, dlq[1:]...)...)
	require.Equal(t, cli.ExitOK, code, errOut)
	lines = decodeLines(t, out)
	require.Len(t, lines, 1)
	require.Equal(t, "k-bad", lines[0]["key"])
	var redriven map[string]any
	require.Eventually(t, func() bool {
		code, out, errOut := command(t, userOperator, append([]string{"dlq", "redrive", "--seq", fmt.Sprint(lines[0]["seq"]), "--delete"}, dlq[1:]...)...)
		require.Equal(t, cli.ExitOK, code, errOut)
		res := decodeLines(t, out)
		require.Len(t, res, 1)
		redriven = res[0]
		return redriven["duplicate"] == false
	}, 30*time.Second, 100*time.Millisecond)
	require.Equal(t, true, redriven["deleted"])
	// The redriven command reached the worker, which rejected it again.
	// (Whether its second dead letter is stored is the dead-letter stream's
	// 1s duplicate window's business: with this test's 1s command window the
	// two may fall inside it.)
	o, err = p.Await(ctx, "w3", uint64(redriven["seq"].(float64)))
	require.NoError(t, err)
	require.NotNil(t, o.Rejected)
	require.Equal(t, messages.CodeInvalidCommand, o.Rejected.Code)

	// The claims bucket, as the worker uses it: a claim, a second key
	// refused (which reads the first claim), the claimant again.
	wc := connect(t, s, userWorker, inboxWorker)
	claims, err := worker.NewClaims(ctx, wc.js, worker.Config{})
	require.NoError(t, err)
	require.NoError(t, claims.Claim(ctx, "claims-test", "acct", "key-1"))
	require.ErrorIs(t, claims.Claim(ctx, "claims-test", "acct", "key-2"), handlers.ErrClaimed)
	require.NoError(t, claims.Claim(ctx, "claims-test", "acct", "key-1"))

	// A redelivery looks for its outcome among the stored events, as the
	// worker does: the newest event of its wallet, from the stream's leader.
	resp, err := wc.js.Conn().RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+messages.StreamEvents,
		[]byte(`{"last_by_subj":"wallets.events.*.w1"}`))
	require.NoError(t, err)
	var got struct {
		Message *struct {
			Subject string `json:"subject"`
		} `json:"message"`
	}
	require.NoError(t, json.Unmarshal(resp.Data, &got), string(resp.Data))
	require.NotNil(t, got.Message, string(resp.Data))
	require.Equal(t, "wallets.events.balance-create-rejected.w1", got.Message.Subject)

	s.requireNoViolations(t)
}

// TestWorkerAcksInTheNewAckFormat: nats-server 2.14 and later can reply to
// deliveries on acknowledgement subjects of a second format,
// $JS.ACK.<domain>.<account hash>.<stream>.<consumer>...; a feature flag
// turns it on today, and the server will make it its default. The worker's
// grant covers both, or every ack, nak and term would be refused and each
// command redelivered until the server gives up on it.
func TestWorkerAcksInTheNewAckFormat(t *testing.T) {
	t.Parallel()
	s := startServerWith(t, authConf(t), "feature_flags { js_ack_fc_v2: true }")
	wlogs := runWorker(t, s)
	defer func() {
		if t.Failed() {
			t.Log("worker logs:\n" + wlogs.String())
		}
	}()
	createOneBalance(t, s)
	require.Eventually(t, func() bool { return s.streams(t)[messages.StreamCommands].msgs == 0 }, 10*time.Second, 50*time.Millisecond,
		"the command was acknowledged")
	s.requireNoViolations(t)
}

// createOneBalance publishes a create-balance as the producer and requires
// the worker to create it.
func createOneBalance(t *testing.T, s *natsServer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pc := connect(t, s, userProducer, inboxProducer)
	p := producer.New(pc.js)
	ack, err := p.Publish(ctx, messages.CreateBalance{WalletID: "w1", Name: "savings"}, "k-1")
	require.NoError(t, err)
	o, err := p.Await(ctx, "w1", ack.Seq)
	require.NoError(t, err)
	require.NotNil(t, o.Created, "%+v", o.Rejected)
}

// streams returns each stream's message count and its consumers, as the
// server itself sees them (no user's permissions involved).
func (s *natsServer) streams(t *testing.T) map[string]streamState {
	t.Helper()
	jsz, err := s.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Consumer: true})
	require.NoError(t, err)
	out := map[string]streamState{}
	for _, a := range jsz.AccountDetails {
		for _, sd := range a.Streams {
			st := streamState{msgs: sd.State.Msgs}
			for _, c := range sd.Consumer {
				st.consumers = append(st.consumers, c.Name)
			}
			out[sd.Name] = st
		}
	}
	return out
}

type streamState struct {
	msgs      uint64
	consumers []string
}

// provisioned starts a server under auth.conf, provisions it as the
// operator, and stores one command and one dead letter.
func provisioned(t *testing.T) *natsServer {
	t.Helper()
	s := startServer(t, authConf(t))
	provision(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pc := connect(t, s, userProducer, inboxProducer)
	_, err := producer.New(pc.js).Publish(ctx, messages.CreateBalance{WalletID: "w1", Name: "savings"}, "k-1")
	require.NoError(t, err)
	wc := connect(t, s, userWorker, inboxWorker)
	dl := &nats.Msg{Subject: messages.DLQSubject("w1"), Data: []byte(`{"walletID":"w1","name":"secret"}`), Header: nats.Header{}}
	dl.Header.Set(messages.HeaderMsgID, "k-dead")
	_, err = wc.js.PublishMsg(ctx, dl)
	require.NoError(t, err)
	s.requireNoViolations(t)
	return s
}

// requireIntact checks that the streams are as provisioned() left them.
func (s *natsServer) requireIntact(t *testing.T) {
	t.Helper()
	st := s.streams(t)
	require.Equal(t, uint64(1), st[messages.StreamCommands].msgs, "the command is still there, untouched")
	require.Equal(t, []string{messages.ConsumerName}, st[messages.StreamCommands].consumers, "no other consumer on the commands")
	require.Equal(t, uint64(0), st[messages.StreamEvents].msgs, "no forged outcome event")
	require.Equal(t, uint64(1), st[messages.StreamDLQ].msgs, "no forged dead letter, none deleted")
	require.Empty(t, st[messages.StreamDLQ].consumers, "nobody reads the dead letters")
	require.Contains(t, st, "KV_"+messages.BucketClaims)
}

// TestProducerIsRefused: a producer may not forge outcome events or dead
// letters, change, delete or purge a stream, consume or pull commands, read
// dead letters, or read other users' replies.
func TestProducerIsRefused(t *testing.T) {
	t.Parallel()
	s := provisioned(t)
	pc := connect(t, s, userProducer, inboxProducer)

	t.Run("no outcome events, no dead letters", func(t *testing.T) {
		pc.requirePublishDenied(t, messages.BalanceCreatedSubject("w1"))
		pc.requirePublishDenied(t, messages.BalanceCreateRejectedSubject("w1"))
		pc.requirePublishDenied(t, messages.DLQSubject("w1"))
		pc.requirePublishDenied(t, "wallets.commands.other.w1") // commands: the kinds the worker has only
	})
	t.Run("no stream deleted, purged or changed", func(t *testing.T) {
		for _, name := range []string{messages.StreamCommands, messages.StreamEvents, messages.StreamDLQ} {
			pc.requireAPIDenied(t, "$JS.API.STREAM.DELETE."+name, func(ctx context.Context) error { return pc.js.DeleteStream(ctx, name) })
			pc.requireAPIDenied(t, "$JS.API.STREAM.PURGE."+name, func(ctx context.Context) error {
				_, err := pc.Request("$JS.API.STREAM.PURGE."+name, nil, 2*time.Second)
				return err
			})
		}
		cfg := worker.Config{}.StreamConfigs()[0]
		cfg.MaxAge = time.Second
		pc.requireAPIDenied(t, "$JS.API.STREAM.UPDATE."+messages.StreamCommands, func(ctx context.Context) error {
			_, err := pc.js.UpdateStream(ctx, cfg)
			return err
		})
	})
	t.Run("no commands consumed", func(t *testing.T) {
		pc.requireAPIDenied(t, "$JS.API.CONSUMER.CREATE.WALLETS_COMMANDS.thief.wallets.commands.>", func(ctx context.Context) error {
			_, err := pc.js.CreateConsumer(ctx, messages.StreamCommands, jetstream.ConsumerConfig{Durable: "thief", FilterSubject: messages.SubjectConsumerFilter})
			return err
		})
		pc.requireAPIDenied(t, "$JS.API.CONSUMER.CREATE.WALLETS_COMMANDS.thief", func(ctx context.Context) error {
			_, err := pc.js.CreateConsumer(ctx, messages.StreamCommands, jetstream.ConsumerConfig{Durable: "thief"})
			return err
		})
		pc.requirePublishDenied(t, "$JS.API.CONSUMER.MSG.NEXT.WALLETS_COMMANDS.wallets-worker")
		pc.requireSubscribeDenied(t, "wallets.commands.>")
	})
	t.Run("no dead letter read", func(t *testing.T) {
		pc.requireAPIDenied(t, "$JS.API.STREAM.INFO.WALLETS_DLQ", func(ctx context.Context) error {
			_, err := pc.js.Stream(ctx, messages.StreamDLQ)
			return err
		})
		pc.requirePublishDenied(t, "$JS.API.STREAM.MSG.GET.WALLETS_DLQ")
		pc.requirePublishDenied(t, "$JS.API.DIRECT.GET.WALLETS_DLQ")
		pc.requireAPIDenied(t, "$JS.API.CONSUMER.CREATE.WALLETS_DLQ.peek", func(ctx context.Context) error {
			_, err := pc.js.CreateConsumer(ctx, messages.StreamDLQ, jetstream.ConsumerConfig{Durable: "peek"})
			return err
		})
		pc.requireSubscribeDenied(t, "wallets.dlq.>")
	})
	t.Run("no other user's replies", func(t *testing.T) {
		pc.requireSubscribeDenied(t, "_INBOX.>") // the worker's: pulled commands
		pc.requireSubscribeDenied(t, inboxOperator+".>")
	})
	s.requireIntact(t)
}

// TestWorkerIsRefused: the worker publishes its events and dead letters and
// nothing else (no commands: `dlq redrive` is the operator's), deletes and
// purges nothing, reads no dead letter and no other user's replies.
func TestWorkerIsRefused(t *testing.T) {
	t.Parallel()
	s := provisioned(t)
	wc := connect(t, s, userWorker, inboxWorker)

	t.Run("no publish outside its subjects", func(t *testing.T) {
		for _, subject := range []string{
			messages.CreateBalanceSubject("w1"),
			"wallets.events.balance-deleted.w1",
			"wallets.dlq.other.w1",
			"wallets.other",
			"$KV.other_bucket.key",
		} {
			wc.requirePublishDenied(t, subject)
		}
	})
	t.Run("no stream or consumer deleted or purged", func(t *testing.T) {
		for _, name := range []string{messages.StreamCommands, messages.StreamEvents, messages.StreamDLQ, "KV_" + messages.BucketClaims} {
			wc.requireAPIDenied(t, "$JS.API.STREAM.DELETE."+name, func(ctx context.Context) error { return wc.js.DeleteStream(ctx, name) })
		}
		wc.requirePublishDenied(t, "$JS.API.STREAM.PURGE.WALLETS_COMMANDS")
		wc.requirePublishDenied(t, "$JS.API.CONSUMER.DELETE.WALLETS_COMMANDS.wallets-worker")
		wc.requireAPIDenied(t, "$JS.API.CONSUMER.CREATE.WALLETS_COMMANDS.thief", func(ctx context.Context) error {
			_, err := wc.js.CreateConsumer(ctx, messages.StreamCommands, jetstream.ConsumerConfig{Durable: "thief"})
			return err
		})
	})
	t.Run("no dead letter read", func(t *testing.T) {
		wc.requireAPIDenied(t, "$JS.API.STREAM.INFO.WALLETS_DLQ", func(ctx context.Context) error {
			_, err := wc.js.Stream(ctx, messages.StreamDLQ)
			return err
		})
		wc.requirePublishDenied(t, "$JS.API.STREAM.MSG.GET.WALLETS_DLQ")
		wc.requireSubscribeDenied(t, "wallets.>")
	})
	t.Run("no other user's replies", func(t *testing.T) {
		wc.requireSubscribeDenied(t, "_INBOX.>")
		wc.requireSubscribeDenied(t, inboxProducer+".>")
		wc.requireSubscribeDenied(t, inboxOperator+".>") // dead letters, as `dlq list` reads them
	})
	s.requireIntact(t)
}

// TestEachUserDefaultsToItsOwnInbox: given only their user names, the
// worker, a producer and an operator read their replies under the prefixes
// auth.conf grants them, with no --nats-inbox-prefix; a prefix the user may
// not read is refused at once, not by a timeout.
func TestEachUserDefaultsToItsOwnInbox(t *testing.T) {
	t.Parallel()
	s := startServer(t, authConf(t))
	provision(t, s)
	wlogs := runWorker(t, s)
	defer func() {
		if t.Failed() {
			t.Log("worker logs:\n" + wlogs.String())
		}
	}()

	code, out, errOut := command(t, userProducer, "publish", "create-balance", "--nats-url", s.ClientURL(),
		"--wallet", "w1", "--name", "gift", "--key", "k-default-inbox", "--wait", "--timeout", "30s")
	require.Equal(t, cli.ExitOK, code, errOut)
	lines := decodeLines(t, out)
	require.Len(t, lines, 2)
	require.Equal(t, "balance-created", lines[1]["type"])

	code, _, errOut = command(t, userOperator, "dlq", "list", "--nats-url", s.ClientURL())
	require.Equal(t, cli.ExitOK, code, errOut)
	s.requireNoViolations(t)

	start := time.Now()
	code, _, errOut = command(t, userProducer, "publish", "create-balance", "--nats-url", s.ClientURL(), "--nats-inbox-prefix", "_INBOX",
		"--wallet", "w1", "--name", "other", "--wait", "--timeout", "30s")
	require.NotEqual(t, cli.ExitOK, code)
	require.Less(t, time.Since(start), 10*time.Second, "refused at once, not after --timeout")
	require.Contains(t, errOut, "_INBOX (--nats-inbox-prefix) is not one it may subscribe to", errOut)
}

// TestOperatorIsRefused: the operator provisions and handles dead letters; it
// does not delete streams, forge outcomes or take commands.
func TestOperatorIsRefused(t *testing.T) {
	t.Parallel()
	s := provisioned(t)
	oc := connect(t, s, userOperator, inboxOperator)
	oc.requireAPIDenied(t, "$JS.API.STREAM.DELETE.WALLETS_COMMANDS", func(ctx context.Context) error {
		return oc.js.DeleteStream(ctx, messages.StreamCommands)
	})
	oc.requirePublishDenied(t, "$JS.API.STREAM.PURGE.WALLETS_DLQ")
	oc.requirePublishDenied(t, messages.BalanceCreatedSubject("w1"))
	oc.requirePublishDenied(t, "$JS.API.CONSUMER.MSG.NEXT.WALLETS_COMMANDS.wallets-worker")
	oc.requireSubscribeDenied(t, "_INBOX.>")
	s.requireIntact(t)
}

// TestWorkerWithoutProvisioningRights: with the worker's provisioning lines
// deleted, the worker cannot create or change the streams; the operator
// provisions with `wallets-worker provision`, and `run --no-provision` binds
// and works without a single violation.
func TestWorkerWithoutProvisioningRights(t *testing.T) {
	t.Parallel()
	s := startServer(t, withoutProvisioning(t))
	wc := connect(t, s, userWorker, inboxWorker)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	require.Error(t, worker.Provision(ctx, wc.js, worker.Config{}))
	cancel()
	wc.requireDenied(t, `Publish to "$JS.API.STREAM.UPDATE.WALLETS_COMMANDS"`)
	refused := len(s.violations.all())

	provision(t, s)
	runWorker(t, s, "--no-provision")
	createOneBalance(t, s)
	require.Len(t, s.violations.all(), refused, "violations after provisioning: %v", s.violations.all()[refused:])
}

// TestAuthentication: no connection without credentials, with a wrong
// password, another user's password, or an unknown user.
func TestAuthentication(t *testing.T) {
	t.Parallel()
	s := startServer(t, authConf(t))
	refused := func(opts ...nats.Option) {
		t.Helper()
		nc, err := nats.Connect(s.ClientURL(), append(opts, nats.MaxReconnects(0))...)
		if nc != nil {
			nc.Close()
		}
		require.ErrorIs(t, err, nats.ErrAuthorization)
	}
	refused()
	refused(nats.UserInfo("nobody", "x"))
	for user := range passwords {
		refused(nats.UserInfo(user, passwords[user]+"x"))
		refused(nats.UserInfo(user, ""))
		for other, pw := range passwords {
			if other != user {
				refused(nats.UserInfo(user, pw))
			}
		}
		nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(user, passwords[user]))
		require.NoError(t, err, user)
		nc.Close()
	}
}

// TestConfigurationNeedsEveryPassword: nats-server refuses to start when a
// password variable is unset, rather than admit a user without one. It runs
// before the parallel tests, which need the variables.
func TestConfigurationNeedsEveryPassword(t *testing.T) {
	for user, name := range passwordEnv {
		require.NoError(t, os.Unsetenv(name))
		dir := t.TempDir()
		rel, err := filepath.Rel(dir, authConf(t))
		require.NoError(t, err)
		conf := filepath.Join(dir, "nats-server.conf")
		require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf("jetstream {store_dir: %q}\ninclude %q\n", dir, rel)), 0o600))
		_, err = server.ProcessConfigFile(conf)
		require.NoError(t, os.Setenv(name, passwords[user]))
		require.ErrorContains(t, err, name)
	}
}

// users reads the users of a configuration that includes auth, as
// nats-server does.
func users(t *testing.T, auth string) []*server.User {
	t.Helper()
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, auth)
	require.NoError(t, err)
	conf := filepath.Join(dir, "nats-server.conf")
	require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf("jetstream {store_dir: %q}\ninclude %q\n", dir, rel)), 0o600))
	opts, err := server.ProcessConfigFile(conf)
	require.NoError(t, err)
	require.Len(t, opts.Users, len(passwords))
	return opts.Users
}

// TestHelmValuesGrantWhatAuthConfGrants: the Helm values carry the users of
// auth.conf, with the same passwords and the same permissions.
func TestHelmValuesGrantWhatAuthConfGrants(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join("..", "nats-helm-values.yaml"))
	require.NoError(t, err)
	var values struct {
		Config struct {
			Merge struct {
				Authorization json.RawMessage `json:"authorization"`
			} `json:"merge"`
		} `json:"config"`
		Container struct {
			Env map[string]json.RawMessage `json:"env"`
		} `json:"container"`
	}
	require.NoError(t, yaml.Unmarshal(raw, &values))
	require.NotEmpty(t, values.Config.Merge.Authorization, "config.merge.authorization")
	for _, name := range passwordEnv {
		var env struct {
			ValueFrom struct {
				SecretKeyRef struct{ Name, Key string } `json:"secretKeyRef"`
			} `json:"valueFrom"`
		}
		require.NoError(t, json.Unmarshal(values.Container.Env[name], &env), name)
		require.NotEmpty(t, env.ValueFrom.SecretKeyRef.Key, "container.env.%s comes from a Secret", name)
	}

	// nats-server reads JSON too (without \u escapes), and the chart writes
	// "<< $X >>" as $X.
	var authz any
	require.NoError(t, json.Unmarshal(values.Config.Merge.Authorization, &authz))
	var js bytes.Buffer
	enc := json.NewEncoder(&js)
	enc.SetEscapeHTML(false)
	require.NoError(t, enc.Encode(authz))
	unquoted := regexp.MustCompile(`"<< (\$[A-Z_]+) >>"`).ReplaceAll(js.Bytes(), []byte("$1"))
	fragment := filepath.Join(t.TempDir(), "helm-auth.conf")
	require.NoError(t, os.WriteFile(fragment, append([]byte("authorization: "), unquoted...), 0o600))

	want, got := users(t, authConf(t)), users(t, fragment)
	require.Equal(t, len(want), len(got))
	for i := range want {
		require.Equal(t, want[i].Username, got[i].Username)
		require.Equal(t, passwords[want[i].Username], got[i].Password, "%s: the password of the environment", got[i].Username)
		require.Equal(t, want[i].Password, got[i].Password)
		require.Equal(t, *want[i].Permissions.Publish, *got[i].Permissions.Publish, "publish permissions of %s", got[i].Username)
		require.Equal(t, *want[i].Permissions.Subscribe, *got[i].Permissions.Subscribe, "subscribe permissions of %s", got[i].Username)
		require.Equal(t, want[i].Permissions.Response, got[i].Permissions.Response, "response permissions of %s", got[i].Username)
	}
}

// TestPasswordRotation: the worker reads its password from a file again on
// every reconnect, so rotating it is: the new password into the file, then
// the server's environment changed and nats-server restarted (in a cluster,
// one server at a time). Here a reload in process stands in for the restart
// (nats-server reads its environment only when it starts): the server drops
// the connection whose password is no longer valid, and the worker comes back
// with the new one. Not parallel: it changes the environment.
func TestPasswordRotation(t *testing.T) {
	env := passwordEnv[userWorker]
	t.Setenv(env, "first-secret")
	s := startServer(t, authConf(t))

	dir := t.TempDir()
	clientFile := filepath.Join(dir, "worker-password")
	require.NoError(t, os.WriteFile(clientFile, []byte("first-secret\n"), 0o600))
	nc, err := natsconn.Connect(natsconn.Config{URL: s.ClientURL(), User: userWorker, PasswordFile: clientFile},
		nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	reconnects := nc.Stats().Reconnects

	require.NoError(t, os.WriteFile(clientFile, []byte("second-secret\n"), 0o600))
	require.True(t, nc.IsConnected(), "a live connection is not affected by the file")
	t.Setenv(env, "second-secret")
	require.NoError(t, s.Reload())

	require.Eventually(t, func() bool { return nc.Stats().Reconnects > reconnects && nc.IsConnected() }, 20*time.Second, 20*time.Millisecond,
		"the worker reconnects with its new password")
	_, err = nats.Connect(s.ClientURL(), nats.UserInfo(userWorker, "first-secret"))
	require.ErrorIs(t, err, nats.ErrAuthorization, "the old password is refused")
}

// TestAwaiterSurvivesAReset: a producer's ordered consumer that resets (here
// after a server restart, which loses its ephemeral consumer) deletes the
// consumer it had and creates another; under auth.conf it does so without a
// violation and still delivers outcomes.
func TestAwaiterSurvivesAReset(t *testing.T) {
	t.Parallel()
	s := provisioned(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pc := connect(t, s, userProducer, inboxProducer)
	aw, err := producer.NewAwaiter(ctx, pc.js)
	require.NoError(t, err)
	defer aw.Stop()

	s.restart(t)
	require.Eventually(t, pc.IsConnected, 20*time.Second, 20*time.Millisecond)

	// An outcome stored after the restart, as the worker would store it.
	wc := connect(t, s, userWorker, inboxWorker)
	ev := &nats.Msg{Subject: messages.BalanceCreatedSubject("w1"), Header: nats.Header{},
		Data: []byte(`{"key":"k-1","walletID":"w1","balance":{"name":"savings","priority":0,"expiresAt":null},"ledger":"l","account":"a","replayed":false}`)}
	ev.Header.Set(messages.HeaderCommandKey, "k-1")
	ev.Header.Set(messages.HeaderCommandSeq, "1")
	ev.Header.Set(messages.HeaderMsgID, messages.EventMsgID("k-1", 1))
	_, err = wc.js.PublishMsg(ctx, ev)
	require.NoError(t, err)
	o, err := aw.Await(ctx, 1)
	require.NoError(t, err)
	require.NotNil(t, o.Created)
	s.requireNoViolations(t)
}

// TestNKeys: the same users with NKeys instead of passwords, as
// docs/nats-authorization.md says to write them (each user and password
// replaced by the user's public key), keep the same permissions: the
// operator provisions with its seed file (--nats-nkey), a producer publishes
// a command and may not forge an event, the worker binds the claims bucket
// and may not publish a command, and nobody gets in without a key.
func TestNKeys(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(authConf(t))
	require.NoError(t, err)
	userPassword := regexp.MustCompile(`user: \S+\n\s+password: \$(WALLETS_NATS_[A-Z]+)_PASSWORD`)
	require.Len(t, userPassword.FindAll(b, -1), len(passwords))
	conf := filepath.Join(t.TempDir(), "auth-nkeys.conf")
	require.NoError(t, os.WriteFile(conf, userPassword.ReplaceAll(b, []byte("nkey: $$${1}_NKEY")), 0o600))

	// The same permissions, user by user.
	opts := func(auth string) *server.Options {
		dir := t.TempDir()
		rel, err := filepath.Rel(dir, auth)
		require.NoError(t, err)
		path := filepath.Join(dir, "nats-server.conf")
		require.NoError(t, os.WriteFile(path, []byte(fmt.Sprintf("jetstream {store_dir: %q}\ninclude %q\n", dir, rel)), 0o600))
		o, err := server.ProcessConfigFile(path)
		require.NoError(t, err)
		return o
	}
	byPassword, byNKey := opts(authConf(t)), opts(conf)
	require.Len(t, byNKey.Nkeys, len(byPassword.Users))
	for i, u := range byPassword.Users {
		kp, err := nkeys.FromSeed(nkeySeeds[u.Username])
		require.NoError(t, err)
		pub, err := kp.PublicKey()
		require.NoError(t, err)
		require.Equal(t, pub, byNKey.Nkeys[i].Nkey, u.Username)
		require.Equal(t, *u.Permissions.Publish, *byNKey.Nkeys[i].Permissions.Publish, u.Username)
		require.Equal(t, *u.Permissions.Subscribe, *byNKey.Nkeys[i].Permissions.Subscribe, u.Username)
	}

	s := startServer(t, conf)
	seedFile := func(user string) string {
		p := filepath.Join(t.TempDir(), user+".nk")
		require.NoError(t, os.WriteFile(p, nkeySeeds[user], 0o600))
		return p
	}
	var stderr bytes.Buffer
	code := cli.Main(context.Background(), []string{"provision", "--nats-url", s.ClientURL(), "--nats-nkey", seedFile(userOperator),
		"--nats-inbox-prefix", inboxOperator}, cli.Env{Stderr: &stderr, Getenv: func(string) string { return "" }})
	require.Equal(t, cli.ExitOK, code, stderr.String())

	nkey := func(user string) nats.Option {
		o, err := nats.NkeyOptionFromSeed(seedFile(user))
		require.NoError(t, err)
		return o
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pc := connectWith(t, s, nkey(userProducer), inboxProducer)
	_, err = producer.New(pc.js).Publish(ctx, messages.CreateBalance{WalletID: "w1", Name: "savings"}, "k-1")
	require.NoError(t, err)
	pc.requirePublishDenied(t, messages.BalanceCreatedSubject("w1"))

	wc := connectWith(t, s, nkey(userWorker), inboxWorker)
	_, err = worker.NewClaims(ctx, wc.js, worker.Config{})
	require.NoError(t, err)
	wc.requirePublishDenied(t, messages.CreateBalanceSubject("w1"))

	_, err = nats.Connect(s.ClientURL(), nats.MaxReconnects(0))
	require.ErrorIs(t, err, nats.ErrAuthorization)
	require.Equal(t, uint64(1), s.streams(t)[messages.StreamCommands].msgs)
	require.Len(t, s.violations.all(), 2, "only the two refusals asked for: %v", s.violations.all())
}
