//go:build unix

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/embeddednats"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// Wire names of SPEC §3 and §4, spelled out rather than imported from the
// module: these tests check the public contract.
const (
	streamCommands = "WALLETS_COMMANDS"
	streamEvents   = "WALLETS_EVENTS"
	streamDLQ      = "WALLETS_DLQ"
	consumerName   = "wallets-worker"

	headerMsgID      = "Nats-Msg-Id"
	headerCommandKey = "Wallets-Command-Key"
	headerCommandSeq = "Wallets-Command-Seq"

	subjectCommandPrefix  = "wallets.commands.create-balance."
	subjectCreatedPrefix  = "wallets.events.balance-created."
	subjectRejectedPrefix = "wallets.events.balance-create-rejected."

	codeAlreadyExists = "ALREADY_EXISTS"

	ledgerName   = "wallets-002" // the worker's default --ledger-name
	markerPrefix = "wallets/balances/idempotency/"
)

var (
	commandsFlag         = flag.Int("e2e.commands", 2000, "distinct commands TestCrashKill stores (CI needs at least 2000)")
	killsFlag            = flag.Int("e2e.kills", 5, "SIGKILLs of the worker in TestCrashKill (CI needs at least 5)")
	embeddedCommandsFlag = flag.Int("e2e.embedded-commands", 500, "distinct commands TestCrashKillEmbedded stores (CI needs at least 500)")
	embeddedKillsFlag    = flag.Int("e2e.embedded-kills", 3, "SIGKILLs of the worker in TestCrashKillEmbedded (CI needs at least 3)")
	seedFlag             = flag.Uint64("e2e.seed", 0, "seed of the load plans and kill moments; 0 picks one, which each test logs")
	waitFlag             = flag.Duration("e2e.wait", 2*time.Minute, "deadline of each wait for the worker (readiness, progress, completion)")
	raceBinaryFlag       = flag.Bool("e2e.race-binary", raceEnabled, "build the worker binary with -race (default: when the tests run with -race)")
	binaryFlag           = flag.String("e2e.binary", "", "run this wallets-worker binary instead of building ./cmd/wallets-worker")
	logDirFlag           = flag.String("e2e.logdir", "", "write each worker process's whole output to a file in this directory when its test ends")
	logLevelFlag         = flag.String("e2e.log-level", "", "--log-level of every worker process (default: the worker's own)")
)

// workerBinary is the wallets-worker binary TestMain built.
var workerBinary string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if *binaryFlag != "" {
		workerBinary = *binaryFlag
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "wallets-worker-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin, err := buildWorker(dir, *raceBinaryFlag)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	workerBinary = bin
	return m.Run()
}

// buildWorker builds ./cmd/wallets-worker of this module into dir.
func buildWorker(dir string, race bool) (string, error) { return testutil.BuildWorker(dir, race) }

// ---- waiting ----

// eventually polls cond until it reports true, and fails the test with cond's
// last description when the deadline passes first.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	testutil.Eventually(t, timeout, what, cond)
}

// ---- ports ----

// freeAddr returns 127.0.0.1:port for a port that is free now and that no
// other call handed out, below the kernel's ephemeral range, so that an
// outgoing connection cannot take the port while a killed worker restarts.
func freeAddr(t testing.TB) string { return testutil.FreeAddr(t) }

// ---- servers that outlive the worker ----

// startNATS runs nats-server with JetStream in the test process and returns
// its client URL.
func startNATS(t testing.TB) string {
	t.Helper()
	return testutil.NATSWith(t, embeddednats.Options{Addr: "127.0.0.1:0", ServerName: "e2e"}).ClientURL()
}

// testLedger is the embedded ledger served by an httptest server.
type testLedger struct {
	URL    string
	Client *ledgeradapter.Client
}

// startLedger serves a durable embedded ledger over HTTP in the test process;
// wrap, when set, sits in front of it.
func startLedger(t testing.TB, wrap func(http.Handler) http.Handler) *testLedger {
	t.Helper()
	l := testutil.StartLedger(t, testutil.LedgerOptions{Wrap: wrap})
	return &testLedger{URL: l.URL, Client: l.Client}
}

func ledgerClient(t testing.TB, url string) *ledgeradapter.Client {
	t.Helper()
	return testutil.LedgerClient(t, url, 30*time.Second)
}

// connectNATS connects the test's own client; it reconnects forever, so it
// survives the restarts of an all-embedded worker.
func connectNATS(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return testutil.Connect(t, url,
		nats.Name("wallets-worker-e2e"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond),
		nats.ReconnectJitter(0, 0),
		nats.RetryOnFailedConnect(true),
	)
}

// ---- the worker process ----

// logBuffer collects a child's output for the test to search and show.
type logBuffer = testutil.SyncBuffer

// workerProcess is one `wallets-worker run` child process.
type workerProcess struct {
	name     string
	cmd      *exec.Cmd
	logs     *logBuffer
	httpAddr string
	done     chan struct{} // closed when the process has exited
	exitCode int           // valid once done; -1 when killed by a signal
}

// startWorker starts `wallets-worker run` with args (plus --http-addr and
// --log-format text) in its own process group and waits until its /readyz
// answers 200. The process is killed at the end of the test if still alive;
// its output is shown when the test failed, and a data race in it fails the
// test.
func startWorker(t testing.TB, name string, args ...string) *workerProcess {
	t.Helper()
	return startWorkerEnv(t, name, nil, args...)
}

// startWorkerEnv is startWorker with env ("NAME=value") added to the
// process's environment.
func startWorkerEnv(t testing.TB, name string, env []string, args ...string) *workerProcess {
	t.Helper()
	httpAddr := freeAddr(t)
	full := append([]string{"run", "--http-addr", httpAddr, "--log-format", "text"}, args...)
	if *logLevelFlag != "" {
		full = append(full, "--log-level", *logLevelFlag)
	}
	cmd := exec.Command(workerBinary, full...)
	cmd.Env = append(workerEnv(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &workerProcess{name: name, cmd: cmd, logs: &logBuffer{}, httpAddr: httpAddr, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	require.NoError(t, cmd.Start(), "start %s", name)
	go func() {
		_ = cmd.Wait()
		p.exitCode = cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		if p.running() {
			p.kill(t)
		}
		if p.logs.Contains("WARNING: DATA RACE") {
			t.Errorf("%s: the race detector reported a data race in the worker", p.name)
		}
		if t.Failed() {
			t.Logf("---- %s (%s) output, last lines ----\n%s", p.name, strings.Join(full, " "), p.logs.Tail(120))
		}
		if *logDirFlag != "" {
			name := filepath.Join(*logDirFlag, strings.ReplaceAll(t.Name(), "/", "_")+"."+p.name+".log")
			if err := os.WriteFile(name, []byte(p.logs.String()), 0o644); err != nil {
				t.Errorf("writing %s's output: %v", p.name, err)
			}
		}
	})
	p.waitReady(t)
	return p
}

// workerEnv is the test's environment without WALLETS_WORKER_* and OTEL_*
// variables, which would change the worker's flags or its tracing behind the
// test's back.
func workerEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "WALLETS_WORKER_") || strings.HasPrefix(kv, "OTEL_")
	})
}

func (p *workerProcess) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *workerProcess) waitReady(t testing.TB) {
	t.Helper()
	hc := &http.Client{Timeout: time.Second}
	defer hc.CloseIdleConnections()
	url := "http://" + p.httpAddr + "/readyz"
	eventually(t, *waitFlag, p.name+" ready", func() (bool, string) {
		if !p.running() {
			t.Fatalf("%s exited with status %d before it was ready:\n%s", p.name, p.exitCode, p.logs.Tail(60))
		}
		resp, err := hc.Get(url)
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode == http.StatusOK, fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(b.String()))
	})
}

// kill SIGKILLs the process group and waits for the process to be gone.
func (p *workerProcess) kill(t testing.TB) {
	t.Helper()
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not die within 30s of SIGKILL", p.name)
	}
}

// signal sends sig to the process, as an orchestrator stopping it would.
func (p *workerProcess) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig), "signal %s", p.name)
}

// waitExit waits for the process to exit on its own and returns its status.
func (p *workerProcess) waitExit(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.exitCode
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %s:\n%s", p.name, timeout, p.logs.Tail(60))
		return 0
	}
}

// stop SIGTERMs the worker and requires a clean exit.
func (p *workerProcess) stop(t testing.TB) {
	t.Helper()
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.waitExit(t, time.Minute), "%s: exit status after SIGTERM", p.name)
}

// ---- commands ----

// command is one CreateBalance command as a producer publishes it.
type command struct {
	Key       string
	WalletID  string
	Name      string
	Priority  int64
	ExpiresAt *time.Time
}

// body is the command's JSON body (SPEC §3).
func (c command) body() []byte {
	b, err := json.Marshal(struct {
		WalletID  string     `json:"walletID"`
		Name      string     `json:"name"`
		Priority  int64      `json:"priority"`
		ExpiresAt *time.Time `json:"expiresAt"`
	}{c.WalletID, c.Name, c.Priority, c.ExpiresAt})
	if err != nil {
		panic(err)
	}
	return b
}

// account is the balance's ledger address (SPEC §4), without a prefix.
func (c command) account() string {
	return strings.ReplaceAll("wallets:"+c.WalletID+":"+c.Name, "-", "")
}

// markerKey is the metadata key of key's replay marker (SPEC §4).
func markerKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return markerPrefix + hex.EncodeToString(sum[:])
}

// balancePlan is one balance and every key commanded for it: Winner must
// create it, each of Losers must get ALREADY_EXISTS.
type balancePlan struct {
	Winner command
	Losers []command
}

// simpleBalances returns n commands for n distinct balances spread over
// wallets, keys prefixed with prefix.
func simpleBalances(prefix string, n, wallets int) []balancePlan {
	out := make([]balancePlan, n)
	for i := range n {
		c := command{
			Key:      fmt.Sprintf("%s/%05d", prefix, i),
			WalletID: fmt.Sprintf("%s-w%03d", prefix, i%wallets),
			Name:     fmt.Sprintf("b%d", i/wallets),
			Priority: int64(i % 7),
		}
		if i%3 == 0 {
			exp := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second)
			c.ExpiresAt = &exp
		}
		out[i] = balancePlan{Winner: c}
	}
	return out
}

// ---- publishing ----

// publisher publishes commands and records what JetStream answered.
type publisher struct {
	js jetstream.JetStream

	mu         sync.Mutex
	keyOf      map[uint64]string   // stored stream sequence → key
	seqsOf     map[string][]uint64 // key → its stored sequences
	publishes  int                 // publish calls that got a PubAck
	duplicates int                 // PubAcks marked Duplicate (JetStream dropped the message)
	err        error               // first publish failure
}

func newPublisher(js jetstream.JetStream) *publisher {
	return &publisher{js: js, keyOf: map[uint64]string{}, seqsOf: map[string][]uint64{}}
}

// publish publishes c with Nats-Msg-Id = key, retrying a few times on errors
// (the same Nats-Msg-Id makes a retry safe within the duplicate window).
func (p *publisher) publish(c command) error {
	var err error
	for attempt := range 5 {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 100 * time.Millisecond) // backoff between retries, not a synchronisation
		}
		m := nats.NewMsg(subjectCommandPrefix + c.WalletID)
		m.Data = c.body()
		m.Header.Set(headerMsgID, c.Key)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var ack *jetstream.PubAck
		ack, err = p.js.PublishMsg(ctx, m, jetstream.WithExpectStream(streamCommands))
		cancel()
		if err == nil {
			return p.record(c.Key, ack)
		}
	}
	err = fmt.Errorf("publish %q: %w", c.Key, err)
	p.fail(err)
	return err
}

func (p *publisher) record(key string, ack *jetstream.PubAck) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.publishes++
	if ack.Duplicate {
		p.duplicates++
	}
	if have, ok := p.keyOf[ack.Sequence]; ok {
		if have != key {
			err := fmt.Errorf("PubAck of %q names sequence %d, which stored %q", key, ack.Sequence, have)
			p.setErr(err)
			return err
		}
		return nil
	}
	// A new sequence: a first publish, or a republish JetStream no longer
	// deduplicates (its dedup state of a removed message did not survive a
	// restart); either way a stored command that needs its own outcome.
	p.keyOf[ack.Sequence] = key
	p.seqsOf[key] = append(p.seqsOf[key], ack.Sequence)
	return nil
}

func (p *publisher) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setErr(err)
}

func (p *publisher) setErr(err error) {
	if p.err == nil {
		p.err = err
	}
}

// failure returns the first publish failure.
func (p *publisher) failure() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// stored returns the stored sequences and their keys.
func (p *publisher) stored() map[uint64]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.keyOf)
}

func (p *publisher) counts() (publishes, duplicates, stored int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.publishes, p.duplicates, len(p.keyOf)
}

// ---- outcome events ----

// createdEvent is the body of a balance-created event (SPEC §3).
type createdEvent struct {
	Key      string `json:"key"`
	WalletID string `json:"walletID"`
	Balance  struct {
		Name      string     `json:"name"`
		Priority  int64      `json:"priority"`
		ExpiresAt *time.Time `json:"expiresAt"`
	} `json:"balance"`
	Ledger   string `json:"ledger"`
	Account  string `json:"account"`
	Replayed bool   `json:"replayed"`
}

// rejectedEvent is the body of a balance-create-rejected event (SPEC §3).
type rejectedEvent struct {
	Key      string `json:"key"`
	WalletID string `json:"walletID"`
	Name     string `json:"name"`
	Code     string `json:"code"`
	Message  string `json:"message"`
}

// outcome is one event read from WALLETS_EVENTS.
type outcome struct {
	EventSeq uint64
	CmdSeq   uint64
	SeqErr   error // the Wallets-Command-Seq header is missing or not a number
	Key      string
	MsgID    string
	Subject  string
	Created  *createdEvent
	Rejected *rejectedEvent
	BodyErr  error
}

// collector reads WALLETS_EVENTS from the start with an ordered consumer,
// again from where it stopped whenever the connection or the server goes
// away, and groups the events by Wallets-Command-Seq.
type collector struct {
	onFirst func(key string) // called once per key, on its first outcome, with mu held; must not block

	mu      sync.Mutex
	next    uint64 // the next WALLETS_EVENTS sequence to read
	all     []outcome
	bySeq   map[uint64][]outcome
	seenKey map[string]bool
}

func startCollector(t testing.TB, js jetstream.JetStream, onFirst func(key string)) *collector {
	c := &collector{onFirst: onFirst, next: 1, bySeq: map[uint64][]outcome{}, seenKey: map[string]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			c.consume(ctx, js)
			select { // backoff before reconnecting the reader, not a synchronisation
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return c
}

func (c *collector) consume(ctx context.Context, js jetstream.JetStream) {
	c.mu.Lock()
	start := c.next
	c.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	cons, err := js.OrderedConsumer(cctx, streamEvents, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   start,
	})
	cancel()
	if err != nil {
		return
	}
	it, err := cons.Messages()
	if err != nil {
		return
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next()
		if err != nil {
			return
		}
		c.add(m)
	}
}

func (c *collector) add(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	o := outcome{
		EventSeq: md.Sequence.Stream,
		Key:      m.Headers().Get(headerCommandKey),
		MsgID:    m.Headers().Get(headerMsgID),
		Subject:  m.Subject(),
	}
	o.CmdSeq, o.SeqErr = strconv.ParseUint(m.Headers().Get(headerCommandSeq), 10, 64)
	switch {
	case strings.HasPrefix(o.Subject, subjectCreatedPrefix):
		o.Created = &createdEvent{}
		o.BodyErr = json.Unmarshal(m.Data(), o.Created)
	case strings.HasPrefix(o.Subject, subjectRejectedPrefix):
		o.Rejected = &rejectedEvent{}
		o.BodyErr = json.Unmarshal(m.Data(), o.Rejected)
	default:
		o.BodyErr = fmt.Errorf("unexpected subject %q", o.Subject)
	}

	c.mu.Lock()
	if o.EventSeq < c.next { // read again after a reconnect
		c.mu.Unlock()
		return
	}
	c.next = o.EventSeq + 1
	c.all = append(c.all, o)
	c.bySeq[o.CmdSeq] = append(c.bySeq[o.CmdSeq], o)
	// Under the lock, so that a reader who sees the event read also sees
	// what onFirst did about it.
	if !c.seenKey[o.Key] && c.onFirst != nil {
		c.onFirst(o.Key)
	}
	c.seenKey[o.Key] = true
	c.mu.Unlock()
}

// settled is how many distinct command sequences have an outcome.
func (c *collector) settled() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.bySeq)
}

// hasAll reports whether every one of seqs has an outcome, and how many lack one.
func (c *collector) hasAll(seqs map[uint64]string) (bool, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	missing := 0
	for s := range seqs {
		if len(c.bySeq[s]) == 0 {
			missing++
		}
	}
	return missing == 0, missing
}

// read returns the next unread WALLETS_EVENTS sequence.
func (c *collector) read() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.next
}

func (c *collector) events() []outcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.all)
}

// ---- JetStream state ----

type jsState struct {
	commands, dlq, eventsLast uint64
	pending, ackPending       uint64
}

func (s jsState) String() string {
	return fmt.Sprintf("commands stream %d msgs, consumer pending %d ack-pending %d, DLQ %d msgs, last event seq %d",
		s.commands, s.pending, s.ackPending, s.dlq, s.eventsLast)
}

func readState(js jetstream.JetStream) (jsState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var s jsState
	for name, dst := range map[string]*uint64{streamCommands: &s.commands, streamDLQ: &s.dlq} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			return s, fmt.Errorf("stream %s: %w", name, err)
		}
		*dst = st.CachedInfo().State.Msgs
	}
	ev, err := js.Stream(ctx, streamEvents)
	if err != nil {
		return s, fmt.Errorf("stream %s: %w", streamEvents, err)
	}
	s.eventsLast = ev.CachedInfo().State.LastSeq
	cons, err := js.Consumer(ctx, streamCommands, consumerName)
	if err != nil {
		return s, fmt.Errorf("consumer %s: %w", consumerName, err)
	}
	ci := cons.CachedInfo()
	s.pending, s.ackPending = ci.NumPending, uint64(ci.NumAckPending)
	return s, nil
}

// waitSettled waits up to timeout until the worker is done: the commands
// stream empty, nothing pending or leased, the test's own publishers idle
// (busy, when set, says what they still do, or ""), and the collector has
// read every outcome event stored by then. Since the worker stores a
// command's outcome before it acks the command, no outcome can come after
// that: a command without one is lost, for the verdicts to report, rather
// than awaited until the deadline. alive, when set, fails the wait early.
func waitSettled(t testing.TB, timeout time.Duration, js jetstream.JetStream, pub *publisher, col *collector, busy func() string, alive func() error) {
	t.Helper()
	eventually(t, timeout, "the worker done: commands stream empty, nothing pending or leased, every event read", func() (bool, string) {
		if err := pub.failure(); err != nil {
			t.Fatalf("publishing: %v", err)
		}
		if alive != nil {
			if err := alive(); err != nil {
				t.Fatal(err)
			}
		}
		if busy != nil {
			if b := busy(); b != "" {
				return false, b
			}
		}
		_, missing := col.hasAll(pub.stored())
		s, err := readState(js)
		if err != nil {
			return false, err.Error()
		}
		state := fmt.Sprintf("%s, events read up to %d; %d stored commands without an outcome yet", s, col.read()-1, missing)
		return s.commands == 0 && s.pending == 0 && s.ackPending == 0 && col.read() > s.eventsLast, state
	})
}

// ---- verdicts ----

// problems reports the first few of many similar failures, then a count.
type problems struct {
	t    testing.TB
	what string
	n    int
}

const shownProblems = 15

func (p *problems) add(format string, args ...any) {
	p.t.Helper()
	p.n++
	if p.n <= shownProblems {
		p.t.Errorf(p.what+": "+format, args...)
	}
}

func (p *problems) close() {
	p.t.Helper()
	if p.n > shownProblems {
		p.t.Errorf("%s: ... and %d more problems", p.what, p.n-shownProblems)
	}
}

// figures are what verifyOutcomes counted.
type figures struct {
	stored, outcomes, lost, doubled, replayed, created, rejected int
}

// verifyOutcomes checks the outcome events against what was published: each
// stored command has exactly one event, with the headers of SPEC §3, and for
// each balance only the winner's key creates it (at most one event not a
// replay) while every other key gets ALREADY_EXISTS.
func verifyOutcomes(t testing.TB, pub *publisher, events []outcome, balances []balancePlan) figures {
	t.Helper()
	p := &problems{t: t, what: "outcomes"}
	defer p.close()
	stored := pub.stored()
	f := figures{stored: len(stored), outcomes: len(events)}

	bySeq := map[uint64][]outcome{}
	for _, o := range events {
		if o.SeqErr != nil {
			p.add("event %d: %s header: %v", o.EventSeq, headerCommandSeq, o.SeqErr)
			continue
		}
		if o.BodyErr != nil {
			p.add("event %d on %s: %v", o.EventSeq, o.Subject, o.BodyErr)
			continue
		}
		bySeq[o.CmdSeq] = append(bySeq[o.CmdSeq], o)
		key, ok := stored[o.CmdSeq]
		if !ok {
			p.add("event %d names command sequence %d, which no publish stored", o.EventSeq, o.CmdSeq)
			continue
		}
		if o.Key != key {
			p.add("event %d for sequence %d: %s %q, published key %q", o.EventSeq, o.CmdSeq, headerCommandKey, o.Key, key)
		}
		if want := fmt.Sprintf("%s:%d", key, o.CmdSeq); o.MsgID != want {
			p.add("event %d: %s %q, want %q", o.EventSeq, headerMsgID, o.MsgID, want)
		}
	}
	for seq, key := range stored {
		switch n := len(bySeq[seq]); {
		case n == 0:
			f.lost++
			p.add("command %d (key %q) has no outcome event", seq, key)
		case n > 1:
			f.doubled += n - 1
			p.add("command %d (key %q) has %d outcome events", seq, key, n)
		}
	}

	for _, b := range balances {
		fresh := 0
		for _, seq := range pub.seqsOf[b.Winner.Key] {
			for _, o := range bySeq[seq] {
				if o.Created == nil {
					p.add("winner %q (sequence %d) of %s: rejected %s: %s", b.Winner.Key, seq, b.Winner.account(), o.Rejected.Code, o.Rejected.Message)
					continue
				}
				f.created++
				if o.Created.Replayed {
					f.replayed++
				} else {
					fresh++
				}
				checkCreated(p, b.Winner, o)
			}
		}
		if fresh > 1 {
			p.add("balance %s was created %d times (events not marked replayed)", b.Winner.account(), fresh)
		}
		if len(pub.seqsOf[b.Winner.Key]) == 0 {
			p.add("key %q was never stored", b.Winner.Key)
		}
		for _, l := range b.Losers {
			if len(pub.seqsOf[l.Key]) == 0 {
				p.add("key %q was never stored", l.Key)
			}
			for _, seq := range pub.seqsOf[l.Key] {
				for _, o := range bySeq[seq] {
					if o.Rejected == nil || o.Rejected.Code != codeAlreadyExists {
						p.add("conflicting key %q (sequence %d) on %s: got %s, want %s", l.Key, seq, l.account(), describe(o), codeAlreadyExists)
						continue
					}
					f.rejected++
					if o.Rejected.Key != l.Key || o.Rejected.WalletID != l.WalletID || o.Rejected.Name != l.Name {
						p.add("rejection of %q names key %q wallet %q name %q", l.Key, o.Rejected.Key, o.Rejected.WalletID, o.Rejected.Name)
					}
				}
			}
		}
	}
	return f
}

func checkCreated(p *problems, c command, o outcome) {
	e := o.Created
	if e.Key != c.Key || e.WalletID != c.WalletID || e.Ledger != ledgerName || e.Account != c.account() {
		p.add("created event %d: key %q wallet %q ledger %q account %q, want %q %q %q %q",
			o.EventSeq, e.Key, e.WalletID, e.Ledger, e.Account, c.Key, c.WalletID, ledgerName, c.account())
	}
	if e.Balance.Name != c.Name || e.Balance.Priority != c.Priority || !sameTime(e.Balance.ExpiresAt, c.ExpiresAt) {
		p.add("created event %d for %q: balance %+v, want name %q priority %d expiresAt %v",
			o.EventSeq, c.Key, e.Balance, c.Name, c.Priority, c.ExpiresAt)
	}
}

func describe(o outcome) string {
	if o.Created != nil {
		return fmt.Sprintf("created (replayed=%v)", o.Created.Replayed)
	}
	return fmt.Sprintf("rejected %s (%s)", o.Rejected.Code, o.Rejected.Message)
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(*b)
}

// verifyLedger checks the ledger's logs and accounts: no Idempotency-Key has
// more than one log, each balance has exactly one SET_METADATA log carrying
// its winner's marker and no other key's, nothing else was written, and each
// account reads back as SPEC §4 says. It returns the number of logs.
func verifyLedger(t testing.TB, client *ledgeradapter.Client, balances []balancePlan) int {
	t.Helper()
	p := &problems{t: t, what: "ledger"}
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logs, err := client.AllLogs(ctx, ledgerName)
	require.NoError(t, err, "read the ledger's logs")

	perKey := map[string]int{}
	perAccount := map[string][]ledgeradapter.SetMetadataData{}
	for _, l := range logs {
		if l.IdempotencyKey == "" {
			p.add("log %d (%s) was written without an Idempotency-Key", l.ID, l.Type)
		} else if perKey[l.IdempotencyKey]++; perKey[l.IdempotencyKey] == 2 {
			p.add("Idempotency-Key %q has more than one log", l.IdempotencyKey)
		}
		sm, err := l.SetMetadata()
		if err != nil || sm.TargetType != "ACCOUNT" {
			p.add("log %d is %s on %s, not account metadata (%v)", l.ID, l.Type, sm.TargetType, err)
			continue
		}
		perAccount[sm.TargetID] = append(perAccount[sm.TargetID], sm)
	}

	for _, b := range balances {
		acct := b.Winner.account()
		sms := perAccount[acct]
		delete(perAccount, acct)
		if len(sms) != 1 {
			p.add("account %s has %d SET_METADATA logs, want 1", acct, len(sms))
			continue
		}
		for _, msg := range checkMetadata(sms[0].Metadata, b) {
			p.add("the log of %s: %s", acct, msg)
		}
		account, found, err := client.GetAccount(ctx, ledgerName, acct)
		switch {
		case err != nil:
			p.add("read account %s: %v", acct, err)
		case !found:
			p.add("account %s not found", acct)
		default:
			for _, msg := range checkMetadata(account.Metadata, b) {
				p.add("account %s: %s", acct, msg)
			}
		}
	}
	for acct, sms := range perAccount {
		p.add("account %s was written %d times but no balance was planned there", acct, len(sms))
	}
	return len(logs)
}

// checkMetadata checks a balance's metadata against its winner (SPEC §4).
func checkMetadata(md map[string]string, b balancePlan) []string {
	c := b.Winner
	var out []string
	expiresAt := ""
	if c.ExpiresAt != nil {
		expiresAt = c.ExpiresAt.UTC().Format(time.RFC3339Nano)
	}
	for k, want := range map[string]string{
		"wallets/id":                 c.WalletID,
		"wallets/balances":           "true",
		"wallets/balances/name":      c.Name,
		"wallets/balances/expiresAt": expiresAt,
		"wallets/balances/priority":  strconv.FormatInt(c.Priority, 10),
	} {
		if got, ok := md[k]; !ok || got != want {
			out = append(out, fmt.Sprintf("%s = %q (present %v), want %q", k, got, ok, want))
		}
	}
	raw, ok := md[markerKey(c.Key)]
	if !ok {
		out = append(out, fmt.Sprintf("no replay marker of the winner %q", c.Key))
	} else {
		var m struct {
			Name      string     `json:"name"`
			ExpiresAt *time.Time `json:"expiresAt"`
			Priority  int64      `json:"priority"`
		}
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			out = append(out, fmt.Sprintf("replay marker %q: %v", raw, err))
		} else if m.Name != c.Name || m.Priority != c.Priority || !sameTime(m.ExpiresAt, c.ExpiresAt) {
			out = append(out, fmt.Sprintf("replay marker %s does not describe %+v", raw, c))
		}
	}
	for _, l := range b.Losers {
		if _, ok := md[markerKey(l.Key)]; ok {
			out = append(out, fmt.Sprintf("carries the replay marker of the losing key %q", l.Key))
		}
	}
	return out
}

// ---- odds and ends ----

// seed returns the seed of a test's randomness, logged so a failure can be
// replayed with -e2e.seed.
func seed(t testing.TB) uint64 {
	s := *seedFlag
	if s == 0 {
		s = rand.Uint64()
	}
	t.Logf("seed %d (replay with -args -e2e.seed=%d)", s, s)
	return s
}

// printFigures logs a figures line and prints it to stdout (shown with -v,
// or when the test binary runs on its own).
func printFigures(t testing.TB, line string) {
	t.Helper()
	t.Log(line)
	fmt.Println(line)
}

var errExited = errors.New("worker exited")

// aliveCheck fails a wait when the worker exits behind the test's back.
func aliveCheck(w func() *workerProcess) func() error {
	return func() error {
		p := w()
		if !p.running() {
			return fmt.Errorf("%w: %s, status %d:\n%s", errExited, p.name, p.exitCode, p.logs.Tail(60))
		}
		return nil
	}
}
