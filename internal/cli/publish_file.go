package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/internal/natsconn"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/producer"
)

// publishSynopsis is the help of `publish create-balance`, the --from-file
// format included: this text is its only documentation on the command line.
const publishSynopsis = `wallets-worker publish create-balance --wallet ID --name NAME [flags]
       wallets-worker publish create-balance --from-file FILE.jsonl [flags]

--from-file publishes every command of FILE ("-": standard input), one JSON
object a line: the fields of the command body (walletID, name, priority,
expiresAt), decoded as strictly as the worker decodes them, and an optional
"key", the command's idempotency key:
  {"walletID":"w1","name":"savings","priority":2,"expiresAt":"2027-01-01T00:00:00Z"}
  {"walletID":"w2","name":"gift","key":"order-1042"}
Blank lines and lines starting with # are skipped. A line without "key" (or
with "key":null) gets the key derived from its command, so that publishing the
file again, in any line order, publishes the same keys and applies nothing
twice: producer.KeyFrom(--key-namespace, the command as the worker's encoder
writes it). Identical commands on two lines are therefore one command, the
second reported as a duplicate. An invalid line is reported on standard error
with its number, counted as failed and never published; the others still are.

A line may also name its "kind" (see wallets-worker publish --help): the lines
of a file can mix every kind of command.

At the end one JSON object is printed: {"file","lines","published",
"duplicates","failed","seconds"} ("lines" counts command lines: published +
duplicates + failed), and with --wait "outcomes":{"created","replayed",
"rejected":{CODE:n},"timedOut"}, one outcome per published or duplicate line
(a duplicate's outcome is its original's, or KEY_REUSED when the original
was another command under the same key). Exit status: 1 if a line was
invalid or failed to publish, else 4 if an outcome did not arrive in time,
else 3 if one was rejected, else 0.`

// publishFileSynopsis is the help of `publish --from-file`, lines of any
// kind.
const publishFileSynopsis = `wallets-worker publish --from-file FILE.jsonl [--wait] [flags]

Publishes every command of FILE ("-": standard input), one JSON object a
line: the command's wire body (docs/wire.md) with
more fields: "kind", the command's kind; "key", its idempotency key; and,
for confirm-hold and void-hold, whose body names no wallet, "wallet":
  {"kind":"create-wallet","key":"w-alice","name":"alice"}
  {"kind":"create-balance","walletID":"1e5…","name":"savings"}
  {"kind":"credit-wallet","key":"c-1","walletID":"1e5…","amount":{"asset":"USD/2","amount":100}}
  {"kind":"debit-wallet","key":"d-1","walletID":"1e5…","amount":{"asset":"USD/2","amount":30},"pending":true}
  {"kind":"confirm-hold","key":"f-1","wallet":"1e5…","holdID":"9c0…","final":true}
The body is checked as strictly as the worker decodes it; the subject's
wallet is "wallet", else the body's walletID, or for create-wallet the one the
key derives (holds derive from their debit's key: messages.HoldIDOf).
"key" is required for every kind but create-balance, whose line without a key
gets one derived from the command (publish create-balance --help): two equal
credits on two lines are two credits, and a key derived from a line's content
would make them one. The lines of one wallet are published one after
another, in line order, so the worker applies them in that order; the lines
of different wallets go --in-flight at a time. "publish KIND --from-file"
takes KIND for the lines without "kind". Blank lines and lines starting with # are skipped; an invalid
line is reported on standard error with its number, counted as failed and
never published; the others still are.

At the end one JSON object is printed: {"file","lines","published",
"duplicates","failed","seconds"}, and with --wait "outcomes":{"created",
"applied","replayed","rejected":{CODE:n},"timedOut"}: "created" counts the
balances and wallets created, "applied" the other commands applied,
"replayed" those an earlier publish had applied. Exit status as for
publish create-balance --from-file: 1 if a line was invalid or failed to
publish, else 4 if an outcome did not arrive in time, else 3 if one was
rejected, else 0.`

// Bulk publishing settings.
const (
	// defaultInFlight is how many publishes await their PubAck at once.
	defaultInFlight = 256
	// awaitBatch is how many outcomes one AwaitMany call waits for.
	awaitBatch = 256
	// maxLineBytes bounds a line of --from-file; a command body is at most
	// messages.MaxBodyBytes, so a longer line cannot hold a valid command.
	maxLineBytes = 1 << 20
	// progressEvery is how often the progress line is redrawn.
	progressEvery = 100 * time.Millisecond
	// lineKeyField is the field of a --from-file line that holds the key,
	// lineKindField the one that holds the kind, lineWalletField the
	// subject's wallet of a kind whose body names none (the holds').
	lineKeyField    = "key"
	lineKindField   = "kind"
	lineWalletField = "wallet"
)

// Values of --progress.
const (
	progressAuto   = "auto"
	progressAlways = "always"
	progressNever  = "never"
)

// commandFlags and kindCommandFlags are the single-command flags of
// publish create-balance and publish KIND that --from-file excludes;
// fileFlags are the flags that only --from-file uses.
var (
	commandFlags     = []string{"wallet", "name", "priority", "expires-at", "key"}
	kindCommandFlags = []string{"body", "wallet", "key"}
	fileFlags        = []string{"results", "key-namespace", "in-flight", "progress"}
)

// registerFileFlags adds the --from-file flags to the flags of publish.
func registerFileFlags(fs *flag.FlagSet, f *publishFlags) {
	fs.StringVar(&f.fromFile, "from-file", "", "publish every command of `FILE`, one JSON object a line (see above); - reads standard input")
	fs.StringVar(&f.results, "results", "", "with --from-file: write one JSON line per command line to `FILE` (line, key, seq, duplicate, outcome, code, error), in completion order")
	fs.StringVar(&f.keyNamespace, "key-namespace", "", "with --from-file: `namespace` of the keys derived for lines without \"key\" (default file:<base name of FILE>, or stdin)")
	fs.IntVar(&f.inFlight, "in-flight", defaultInFlight, "with --from-file: publishes awaiting their acknowledgement at once")
	fs.StringVar(&f.progress, "progress", progressAuto, "with --from-file: a progress line on standard error, `mode` auto (when it is a terminal), always or never")
}

// checkFileFlags refuses the flags that do not go with the presence or
// absence of --from-file.
func checkFileFlags(fs *flag.FlagSet, f *publishFlags, single []string) error {
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	var errs []error
	if f.fromFile != "" {
		for _, n := range single {
			if set[n] {
				errs = append(errs, fmt.Errorf("--%s and --from-file are mutually exclusive", n))
			}
		}
		if f.inFlight < 1 {
			errs = append(errs, fmt.Errorf("--in-flight %d is under 1", f.inFlight))
		}
		switch f.progress {
		case progressAuto, progressAlways, progressNever:
		default:
			errs = append(errs, fmt.Errorf("--progress %q is not auto, always or never", f.progress))
		}
	} else {
		for _, n := range fileFlags {
			if set[n] {
				errs = append(errs, fmt.Errorf("--%s needs --from-file", n))
			}
		}
	}
	if len(errs) > 0 {
		return usageError("%v", errors.Join(errs...))
	}
	return nil
}

// fileSummary is the JSON object printed at the end of a --from-file run.
type fileSummary struct {
	File       string         `json:"file"`
	Lines      int64          `json:"lines"`
	Published  int64          `json:"published"`
	Duplicates int64          `json:"duplicates"`
	Failed     int64          `json:"failed"`
	Seconds    float64        `json:"seconds"`
	Outcomes   *outcomeCounts `json:"outcomes,omitempty"`
}

// outcomeCounts counts the outcomes of the published and duplicate lines.
type outcomeCounts struct {
	// Created counts balances and wallets created, Applied the commands of
	// the other kinds applied; Replayed counts those of any kind an earlier
	// publish had applied.
	Created  int64                   `json:"created"`
	Applied  int64                   `json:"applied,omitempty"`
	Replayed int64                   `json:"replayed"`
	Rejected map[messages.Code]int64 `json:"rejected"`
	TimedOut int64                   `json:"timedOut"`
	// Unreadable counts outcome events that arrived but could not be
	// decoded; it never happens with a conforming worker.
	Unreadable int64 `json:"unreadable,omitempty"`
}

// lineResult is one line of --results.
type lineResult struct {
	Line      int    `json:"line"`
	Key       string `json:"key,omitempty"`
	Seq       uint64 `json:"seq,omitempty"`
	Duplicate bool   `json:"duplicate"`
	Kind      string `json:"kind,omitempty"`
	// Outcome is created, applied, replayed, rejected or timedOut, with --wait.
	Outcome string        `json:"outcome,omitempty"`
	Code    messages.Code `json:"code,omitempty"`
	// DecidedBy is "publisher" on a KEY_REUSED no worker published.
	DecidedBy string `json:"decidedBy,omitempty"`
	// Error says why the line was not published (or its outcome unreadable).
	Error string `json:"error,omitempty"`
}

// job is a valid command line on its way to JetStream: a create-balance
// command (cmd) or one of another kind (command).
type job struct {
	line    int
	kind    string
	cmd     messages.CreateBalance
	command producer.Command
	key     string
}

// acked is a job JetStream acknowledged: ack for a create-balance, cack for
// another kind.
type acked struct {
	job
	ack  producer.Ack
	cack producer.CommandAck
}

func (a acked) seq() uint64 { return max(a.ack.Seq, a.cack.Seq) }

func (a acked) duplicate() bool { return a.ack.Duplicate || a.cack.Duplicate }

// bulkRun is one `publish create-balance --from-file` run. Its counters are
// read by the progress line while the run updates them.
type bulkRun struct {
	f         *publishFlags
	name      string // FILE as given
	in        io.Reader
	namespace string
	p         *producer.Producer
	aw        *producer.Awaiter // nil without --wait
	out       *progress
	results   *resultWriter // nil without --results
	start     time.Time
	size      int64 // bytes in FILE, 0 when unknown
	read      atomic.Int64

	lines, published, duplicates, failed                   atomic.Int64
	created, applied, replayed, rejected, timedOut, unread atomic.Int64

	mu    sync.Mutex
	codes map[messages.Code]int64
}

// publishFile runs `publish [KIND] --from-file`.
func publishFile(ctx context.Context, f *publishFlags, env Env) int {
	r := &bulkRun{f: f, name: f.fromFile, namespace: f.keyNamespace, start: time.Now(), codes: map[messages.Code]int64{}}
	var in io.Reader
	if f.fromFile == "-" {
		in = os.Stdin
		if r.namespace == "" {
			r.namespace = "stdin"
		}
	} else {
		file, err := os.Open(f.fromFile)
		if err != nil {
			return exitStatus(err, env.Stderr)
		}
		defer file.Close()
		if fi, err := file.Stat(); err == nil && fi.Mode().IsRegular() {
			r.size = fi.Size()
		}
		in = file
		if r.namespace == "" {
			r.namespace = "file:" + filepath.Base(f.fromFile)
		}
	}
	if err := f.nats.Validate(); err != nil {
		return exitStatus(usageError("%v", err), env.Stderr)
	}
	if f.results != "" {
		w, err := createResults(f.results)
		if err != nil {
			return exitStatus(err, env.Stderr)
		}
		r.results = w
	}

	nc, err := natsconn.Connect(f.nats, nats.Name("wallets-worker publish"), nats.Timeout(min(f.timeout, 10*time.Second)))
	if err != nil {
		_ = r.results.close()
		return exitStatus(err, env.Stderr)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		_ = r.results.close()
		return exitStatus(err, env.Stderr)
	}
	r.p = producer.New(js)
	if f.wait {
		// Started before the first publish, so that every outcome is found;
		// its default look-back also finds those of duplicates.
		sctx, cancel := context.WithTimeout(ctx, f.timeout)
		r.aw, err = producer.NewAwaiter(sctx, js)
		cancel()
		if err != nil {
			_ = r.results.close()
			return exitStatus(err, env.Stderr)
		}
		defer r.aw.Stop()
	}

	show := f.progress == progressAlways ||
		(f.progress == progressAuto && isTerminal(env.Stderr) && env.Getenv("TERM") != "dumb")
	r.in = in
	r.out = startProgress(env.Stderr, show, r.progressLine)
	status := r.run(ctx)
	r.out.stop()

	if err := r.results.close(); err != nil {
		fmt.Fprintf(env.Stderr, "wallets-worker: --results %s: %v\n", f.results, err)
		status = ExitError
	}
	_ = json.NewEncoder(env.Stdout).Encode(r.summary())
	return status
}

// run publishes and, with --wait, awaits every line, and returns the exit
// status.
func (r *bulkRun) run(ctx context.Context) int {
	var acks chan acked
	if r.aw != nil {
		acks = make(chan acked, r.f.inFlight)
	}
	// The wait for outcomes is bounded only once the last publish is
	// acknowledged: a large file's outcomes may take longer than --timeout to
	// come while it is still being published.
	waitCtx, endWait := context.WithCancelCause(ctx)
	defer endWait(nil)
	awaited := make(chan struct{})
	if acks != nil {
		go func() {
			defer close(awaited)
			r.awaitAll(waitCtx, acks)
		}()
	}

	// One lane a publisher, each wallet's lines on one lane: a wallet's
	// commands are published one after another, in line order, so that they
	// are stored, and applied (SPEC §8), in that order; different wallets go
	// in parallel.
	lanes := make([]chan job, r.f.inFlight)
	var publishers sync.WaitGroup
	for i := range lanes {
		lanes[i] = make(chan job, 1)
		publishers.Go(func() { r.publish(ctx, lanes[i], acks) })
	}
	readErr := r.readLines(ctx, func(j job) { lanes[laneOf(j, len(lanes))] <- j })
	for _, l := range lanes {
		close(l)
	}
	publishers.Wait()
	if readErr != nil {
		r.out.printf("wallets-worker: %v\n", readErr)
	}
	if acks != nil {
		timer := time.AfterFunc(r.f.timeout, func() {
			endWait(fmt.Errorf("outcomes not received within %s of the last publish", r.f.timeout))
		})
		defer timer.Stop()
		close(acks)
		<-awaited
		if n := r.timedOut.Load(); n > 0 {
			r.out.printf("wallets-worker: %d outcomes not received: %v\n", n, context.Cause(waitCtx))
		}
	}

	switch {
	case readErr != nil || r.failed.Load() > 0 || r.unread.Load() > 0:
		return ExitError
	case r.timedOut.Load() > 0:
		return ExitTimeout
	case r.rejected.Load() > 0:
		return ExitRejected
	}
	return ExitOK
}

// laneOf is the lane of j's wallet among n.
func laneOf(j job, n int) int {
	wallet := j.command.WalletID
	if j.kind == messages.KindCreateBalance {
		wallet = j.cmd.WalletID
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(wallet))
	return int(h.Sum32() % uint32(n))
}

// readLines reads the input and hands each valid command to send, in line
// order. It returns an error only when the input cannot be read.
func (r *bulkRun) readLines(ctx context.Context, send func(job)) error {
	br := bufio.NewReaderSize(r.in, 64<<10)
	for n := 1; ; n++ {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: stopped at line %d: %w", r.name, n, context.Cause(ctx))
		}
		line, tooLong, err := readLine(br, maxLineBytes, &r.read)
		if err != nil && err != io.EOF {
			return fmt.Errorf("read %s: %w", r.name, err)
		}
		if err == io.EOF && len(line) == 0 && !tooLong {
			return nil
		}
		if n == 1 {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf")) // a byte order mark
		}
		line = bytes.TrimSpace(line)
		switch {
		case tooLong:
			r.lines.Add(1)
			r.fail(n, "", fmt.Errorf("line is over %d bytes", maxLineBytes))
		case len(line) == 0 || line[0] == '#':
		default:
			r.lines.Add(1)
			j, perr := parseLine(line, r.f.kind, r.namespace)
			if perr != nil {
				r.fail(n, j.key, perr)
				break
			}
			j.line = n
			send(j)
		}
		if err == io.EOF {
			return nil
		}
	}
}

// readLine reads one line, counting the bytes read into read. A line longer
// than max is consumed and reported as tooLong, its content dropped.
func readLine(br *bufio.Reader, max int, read *atomic.Int64) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := br.ReadSlice('\n')
		read.Add(int64(len(chunk)))
		if !tooLong && len(line)+len(chunk) <= max {
			line = append(line, chunk...)
		} else {
			tooLong, line = true, nil
		}
		if err != bufio.ErrBufferFull {
			return line, tooLong, err
		}
	}
}

// parseLine decodes one command line: a JSON object with the fields of the
// command body, an optional "key" and an optional "kind" (kind when absent).
// The body fields are decoded by the worker's own decoder, so a line is
// refused for exactly what the worker would refuse. A create-balance line
// without a key gets one derived from the command; the other kinds need one.
func parseLine(line []byte, kind, namespace string) (job, error) {
	notJSON := func(err error) error { return fmt.Errorf("not a JSON object: %v", err) }
	dec := json.NewDecoder(bytes.NewReader(line))
	tok, err := dec.Token()
	if err != nil {
		return job{}, notJSON(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return job{}, errors.New("not a JSON object")
	}
	// The body is the object without "key" and "kind", its other fields
	// copied as written, duplicates included, for the worker's decoder to
	// judge.
	body := append(make([]byte, 0, len(line)), '{')
	var wallet, subjectWallet, key string
	hasKey, sawKey, sawKind, sawWallet := false, false, false, false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return job{}, notJSON(err)
		}
		name := tok.(string) // inside an object the decoder only yields string keys
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return job{}, notJSON(err)
		}
		switch name {
		case lineKeyField:
			if sawKey {
				return job{}, fmt.Errorf("%q appears more than once", lineKeyField)
			}
			sawKey = true
			if string(raw) == "null" {
				continue
			}
			if raw[0] != '"' || json.Unmarshal(raw, &key) != nil {
				return job{}, fmt.Errorf("%q must be a string or null", lineKeyField)
			}
			hasKey = true
			continue
		case lineWalletField:
			if sawWallet {
				return job{}, fmt.Errorf("%q appears more than once", lineWalletField)
			}
			sawWallet = true
			if raw[0] != '"' || json.Unmarshal(raw, &subjectWallet) != nil {
				return job{}, fmt.Errorf("%q must be a string", lineWalletField)
			}
			continue
		case lineKindField:
			if sawKind {
				return job{}, fmt.Errorf("%q appears more than once", lineKindField)
			}
			sawKind = true
			if raw[0] != '"' || json.Unmarshal(raw, &kind) != nil {
				return job{}, fmt.Errorf("%q must be a string", lineKindField)
			}
			continue
		case messages.FieldWalletID:
			_ = json.Unmarshal(raw, &wallet) // judged by the decoder below
		}
		if len(body) > 1 {
			body = append(body, ',')
		}
		quoted, _ := json.Marshal(name)
		body = append(append(append(body, quoted...), ':'), raw...)
	}
	if _, err := dec.Token(); err != nil {
		return job{}, notJSON(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return job{}, errors.New("data after the JSON object")
	}
	body = append(body, '}')

	j := job{kind: kind, key: key}
	switch {
	case kind == "":
		return j, fmt.Errorf("%q is required (one of %s), or name it: publish KIND --from-file", lineKindField, strings.Join(allKinds(), ", "))
	case kind == messages.KindCreateBalance && sawWallet:
		return j, fmt.Errorf("%q is not a field of a create-balance line: its wallet is %s", lineWalletField, messages.FieldWalletID)
	case kind == messages.KindCreateBalance:
		j.cmd, j.key, err = createBalanceLine(body, wallet, key, hasKey, namespace)
		return j, err
	case !slices.Contains(producer.Kinds(), kind):
		return j, fmt.Errorf("unknown kind %q (known: %s)", kind, strings.Join(allKinds(), ", "))
	case !hasKey:
		return j, fmt.Errorf("%q is required for a %s command: each line is one command, and equal lines are as many commands", lineKeyField, kind)
	}
	if err := messages.ValidateKey(key); err != nil {
		return j, err
	}
	j.command, err = producer.NewCommand(kind, subjectWallet, body, key)
	return j, err
}

// allKinds are the kinds publish knows, create-balance first.
func allKinds() []string { return append([]string{messages.KindCreateBalance}, producer.Kinds()...) }

// createBalanceLine decodes the body of a create-balance line, deriving
// its key when the line has none.
func createBalanceLine(body []byte, wallet, key string, hasKey bool, namespace string) (messages.CreateBalance, string, error) {
	// The subject is made from the wallet so that the decoder's own
	// diagnosis of a bad walletID is the one reported.
	subjectWallet := messages.UnknownWallet
	if wallet != "" && !strings.Contains(wallet, ".") {
		subjectWallet = wallet
	}
	cmd, err := messages.DecodeCreateBalance(messages.CreateBalanceSubject(subjectWallet), body)
	if err != nil {
		return cmd, key, err
	}
	if !hasKey {
		// The encoder's form, not the line's: field order, spacing, an
		// explicit zero priority or null expiry and the expiry's time zone do
		// not change the key.
		norm, err := cmd.Encode()
		if err != nil {
			return cmd, "", err
		}
		key = producer.KeyFrom(namespace, string(norm))
	}
	if err := producer.Validate(cmd, key); err != nil {
		return cmd, key, err
	}
	return cmd, key, nil
}

// publish publishes jobs until there are none left, handing each
// acknowledged one to acks, or recording it when acks is nil.
func (r *bulkRun) publish(ctx context.Context, jobs <-chan job, acks chan<- acked) {
	for j := range jobs {
		pctx, cancel := context.WithTimeout(ctx, r.f.timeout)
		a := acked{job: j}
		var err error
		if j.kind == messages.KindCreateBalance {
			a.ack, err = r.p.Publish(pctx, j.cmd, j.key)
		} else {
			a.cack, err = r.p.PublishCommand(pctx, j.command, j.key)
		}
		cancel()
		if err != nil {
			r.fail(j.line, j.key, err)
			continue
		}
		if a.duplicate() {
			r.duplicates.Add(1)
		} else {
			r.published.Add(1)
		}
		if acks != nil {
			acks <- a
			continue
		}
		r.results.write(lineResult{Line: j.line, Kind: j.kind, Key: j.key, Seq: a.seq(), Duplicate: a.duplicate()})
	}
}

// awaitAll awaits the outcomes of acks in batches, each batch on its own
// goroutine so that publishing never waits for the worker, until acks is
// closed and every batch has its outcomes or ctx ended.
func (r *bulkRun) awaitAll(ctx context.Context, acks <-chan acked) {
	var batches sync.WaitGroup
	defer batches.Wait()
	batch := make([]acked, 0, awaitBatch)
	flush := func() {
		if len(batch) == 0 {
			return
		}
		b := batch
		batch = make([]acked, 0, awaitBatch)
		batches.Go(func() { r.await(ctx, b) })
	}
	// A trickle of lines (a slow pipe) still gets its outcomes counted.
	tick := time.NewTicker(5 * progressEvery)
	defer tick.Stop()
	for {
		select {
		case a, ok := <-acks:
			if !ok {
				flush()
				return
			}
			batch = append(batch, a)
			if len(batch) == awaitBatch {
				flush()
			}
		case <-tick.C:
			flush()
		}
	}
}

// await awaits and records the outcomes of one batch, create-balance
// commands and the others each through their own call.
func (r *bulkRun) await(ctx context.Context, b []acked) {
	var balances, others []acked
	for _, a := range b {
		if a.kind == messages.KindCreateBalance {
			balances = append(balances, a)
		} else {
			others = append(others, a)
		}
	}
	if len(balances) > 0 {
		r.awaitBalances(ctx, balances)
	}
	if len(others) > 0 {
		r.awaitCommands(ctx, others)
	}
}

func (r *bulkRun) awaitBalances(ctx context.Context, b []acked) {
	acks := make([]producer.Ack, len(b))
	for i, a := range b {
		acks[i] = a.ack
	}
	outs, err := r.aw.AwaitAcks(ctx, acks) // the outcomes that came, whatever err says
	for i, o := range outs {
		res := lineResult{Line: b[i].line, Kind: b[i].kind, Key: b[i].key, Seq: b[i].ack.Seq, Duplicate: b[i].ack.Duplicate}
		switch {
		case o.Created != nil && o.Created.Replayed:
			r.replayed.Add(1)
			res.Outcome = "replayed"
		case o.Created != nil:
			r.created.Add(1)
			res.Outcome = "created"
		case o.Rejected != nil:
			r.reject(&res, o.Rejected.Code, o.ByPublisher)
		case o.Subject != "": // arrived, but not decodable
			r.unread.Add(1)
			res.Outcome, res.Error = "unreadable", fmt.Sprint(err)
			r.out.printf("wallets-worker: %s:%d: outcome event %d: %v\n", r.name, res.Line, o.Seq, err)
		default:
			r.timedOut.Add(1)
			res.Outcome = "timedOut"
		}
		r.results.write(res)
	}
}

func (r *bulkRun) awaitCommands(ctx context.Context, b []acked) {
	acks := make([]producer.CommandAck, len(b))
	for i, a := range b {
		acks[i] = a.cack
	}
	evs, _ := r.aw.AwaitCommands(ctx, acks) // the outcomes that came, whatever the error says
	for i, e := range evs {
		res := lineResult{Line: b[i].line, Kind: b[i].kind, Key: b[i].key, Seq: b[i].cack.Seq, Duplicate: b[i].cack.Duplicate}
		switch {
		case e.Name == "":
			r.timedOut.Add(1)
			res.Outcome = "timedOut"
		case e.Rejected():
			r.reject(&res, e.Code, e.DecidedBy != "")
		case e.Replayed():
			r.replayed.Add(1)
			res.Outcome = "replayed"
		case b[i].kind == messages.KindCreateWallet:
			r.created.Add(1)
			res.Outcome = "created"
		default:
			r.applied.Add(1)
			res.Outcome = "applied"
		}
		r.results.write(res)
	}
}

// reject records a rejected outcome with code.
func (r *bulkRun) reject(res *lineResult, code messages.Code, byPublisher bool) {
	r.rejected.Add(1)
	r.mu.Lock()
	r.codes[code]++
	r.mu.Unlock()
	res.Outcome, res.Code = "rejected", code
	if byPublisher {
		res.DecidedBy = decidedByPublisher
	}
}

// fail records a line that was not published.
func (r *bulkRun) fail(line int, key string, err error) {
	r.failed.Add(1)
	r.out.printf("wallets-worker: %s:%d: %v\n", r.name, line, err)
	r.results.write(lineResult{Line: line, Key: key, Error: err.Error()})
}

func (r *bulkRun) summary() fileSummary {
	s := fileSummary{
		File:       r.name,
		Lines:      r.lines.Load(),
		Published:  r.published.Load(),
		Duplicates: r.duplicates.Load(),
		Failed:     r.failed.Load(),
		Seconds:    math.Round(time.Since(r.start).Seconds()*1000) / 1000,
	}
	if r.aw != nil {
		r.mu.Lock()
		codes := make(map[messages.Code]int64, len(r.codes))
		for c, n := range r.codes {
			codes[c] = n
		}
		r.mu.Unlock()
		s.Outcomes = &outcomeCounts{
			Created:    r.created.Load(),
			Applied:    r.applied.Load(),
			Replayed:   r.replayed.Load(),
			Rejected:   codes,
			TimedOut:   r.timedOut.Load(),
			Unreadable: r.unread.Load(),
		}
	}
	return s
}

// progressLine is the text of the progress line.
func (r *bulkRun) progressLine() string {
	var b strings.Builder
	if r.size > 0 {
		const width = 20
		frac := min(float64(r.read.Load())/float64(r.size), 1)
		done := int(frac * width)
		fmt.Fprintf(&b, "[%s%s] %3.0f%% ", strings.Repeat("#", done), strings.Repeat(".", width-done), frac*100)
	}
	sent := r.published.Load() + r.duplicates.Load()
	fmt.Fprintf(&b, "lines %d  published %d  duplicates %d  failed %d",
		r.lines.Load(), r.published.Load(), r.duplicates.Load(), r.failed.Load())
	if r.aw != nil {
		fmt.Fprintf(&b, "  outcomes %d/%d", r.created.Load()+r.applied.Load()+r.replayed.Load()+r.rejected.Load()+r.timedOut.Load()+r.unread.Load(), sent)
	}
	if s := time.Since(r.start).Seconds(); s > 0 {
		fmt.Fprintf(&b, "  %.0f/s", float64(sent+r.failed.Load())/s)
	}
	return b.String()
}

// progress draws a one-line progress report on a terminal, redrawn at most
// every progressEvery, and lets messages be written above it. Off, it only
// passes messages through, so no escape code reaches a file or a pipe.
type progress struct {
	w     io.Writer
	line  func() string
	mu    sync.Mutex
	drawn bool
	quit  chan struct{} // nil when off
	done  chan struct{}
}

func startProgress(w io.Writer, on bool, line func() string) *progress {
	p := &progress{w: w, line: line}
	if !on {
		return p
	}
	p.quit, p.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.done)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-p.quit:
				return
			case <-t.C:
				p.draw()
			}
		}
	}()
	return p
}

// draw rewrites the line in place: carriage return, text, erase to the end.
func (p *progress) draw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprint(p.w, "\r"+p.line()+"\x1b[K")
	p.drawn = true
}

// printf writes a message on a line of its own; the progress line comes back
// at the next redraw.
func (p *progress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
	fmt.Fprintf(p.w, format, args...)
}

// stop draws the final state and ends the line.
func (p *progress) stop() {
	if p.quit == nil {
		return
	}
	close(p.quit)
	<-p.done
	p.draw()
	fmt.Fprintln(p.w)
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// resultWriter writes --results; a nil one writes nothing.
type resultWriter struct {
	mu   sync.Mutex
	file *os.File
	buf  *bufio.Writer
	enc  *json.Encoder
	err  error
}

func createResults(path string) (*resultWriter, error) {
	file, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--results: %w", err)
	}
	w := &resultWriter{file: file, buf: bufio.NewWriter(file)}
	w.enc = json.NewEncoder(w.buf)
	return w, nil
}

func (w *resultWriter) write(r lineResult) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = w.enc.Encode(r)
	}
}

func (w *resultWriter) close() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return errors.Join(w.err, w.buf.Flush(), w.file.Close())
}
