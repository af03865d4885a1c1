package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/messages"
)

// ErrShutdown is the cancel cause of in-flight work when a shutdown stops
// waiting for it: such a command is handed back, not counted as failed.
var ErrShutdown = errors.New("worker shutting down")

// Worker consumes commands of the kinds it is given from the durable
// consumer and settles each one. It knows a kind only through
// handlers.Kind: the kind decodes and decides, the worker moves, leases,
// retries, settles and dead-letters.
type Worker struct {
	cfg    Config
	js     jetstream.JetStream
	kinds  handlers.Kinds
	spans  map[string]spanNames // by kind
	log    *slog.Logger
	tracer trace.Tracer

	work      context.Context
	abortWork context.CancelCauseFunc

	breaker *breaker
	line    *line
	pool    *pool
	stats   Stats

	// hooks lets tests inject faults at the settle seam.
	hooks hooks
}

type hooks struct {
	// beforeAck runs after the outcome event is stored and before the ack;
	// returning an error skips the ack, as a lost ack would.
	beforeAck func(*delivery) error
	// publish replaces the event/dead-letter publish when set.
	publish func(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error)
}

// Stats counts what a Worker did since it started.
type Stats struct {
	Created, Replayed, Rejected, DeadLettered atomic.Int64
	Retried, Deferred, HandedBack, Panics     atomic.Int64
	// Held counts the deliveries that waited for the ledger while the
	// breaker was open (once per delivery and outage).
	Held atomic.Int64
	// OrderWaits counts the deliveries that waited for an earlier command
	// of their wallet (once per delivery).
	OrderWaits atomic.Int64
	// Chained counts the deliveries decided in the chain of an earlier
	// command of their wallet.
	Chained atomic.Int64
	// SettledBefore counts the deliveries acknowledged without being
	// decided: a redelivery whose outcome event an earlier delivery had
	// stored, or a copy of a command another delivery had settled (gone
	// from the commands stream).
	SettledBefore atomic.Int64
}

// New returns a Worker of the given kinds. cfg is validated after defaults
// are applied.
func New(js jetstream.JetStream, kinds handlers.Kinds, cfg Config, log *slog.Logger) (*Worker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	if js == nil || len(kinds) == 0 {
		return nil, errors.New("worker: JetStream and at least one kind are required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	work, abort := context.WithCancelCause(context.Background())
	spans := map[string]spanNames{}
	names := make([]string, 0, len(kinds))
	for name := range kinds {
		spans[name] = newSpanNames(name)
		names = append(names, name)
	}
	cfg.Metrics.kinds(names)
	w := &Worker{cfg: cfg, js: js, kinds: kinds, spans: spans, log: log, tracer: tracerFrom(cfg.TracerProvider), work: work, abortWork: abort}
	w.breaker = newBreaker(cfg.Breaker, cfg.HandlerTimeout, log, cfg.Metrics, &w.stats)
	w.line = newLine(cfg.Order, js, cfg.AckWait, cfg.lineAsideWait())
	// Each delivery is handled on a kept goroutine, whose stack has grown
	// already.
	w.pool = newPool(cfg.Concurrency)
	return w, nil
}

// Ledger reports the ledger's state as the breaker sees it: always available
// when the breaker is off.
func (w *Worker) Ledger() LedgerState { return w.breaker.ledgerState() }

// Stats returns the worker's counters.
func (w *Worker) Stats() *Stats { return &w.stats }

// Config returns the configuration in force, defaults applied.
func (w *Worker) Config() Config { return w.cfg }

// Abort cancels the commands in flight at once (a second signal). They are
// handed back to JetStream for another delivery; nothing is lost. Call it
// after cancelling Run's context: on its own it does not stop the pulling, and
// every new delivery would be handed back at once.
func (w *Worker) Abort() { w.abortWork(ErrShutdown) }

// Run consumes until ctx is cancelled, then drains: it stops pulling, hands
// back deliveries not yet started, and waits up to DrainTimeout for the ones
// in flight, after which it aborts them. It returns nil after a clean drain.
func (w *Worker) Run(ctx context.Context) error {
	consumer, err := w.js.Consumer(ctx, messages.StreamCommands, messages.ConsumerName)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped before it started: nothing to drain
		}
		return fmt.Errorf("bind consumer %s on %s: %w", messages.ConsumerName, messages.StreamCommands, err)
	}
	if w.cfg.Order == OrderWallet {
		// The line asks the stream for each wallet's head: refused (a user
		// without the grant), every command would wait a whole ack wait.
		// Found out now, not command by command.
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := w.line.head(pctx, messages.UnknownWallet)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("order within a wallet: read the first command of a wallet from %s (grant $JS.API.STREAM.INFO.%s, $JS.API.DIRECT.GET.%s and $JS.API.STREAM.MSG.GET.%s, or run with --order none): %w",
				messages.StreamCommands, messages.StreamCommands, messages.StreamCommands, messages.StreamCommands, err)
		}
	}
	// A redelivery reads the newest event of its wallet (storedOutcome):
	// refused, each would wait for nothing and then be decided again.
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = w.newestEvent(pctx, messages.UnknownWallet)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("a redelivered command looks for its stored outcome: read the newest event of a wallet from %s (it needs the stream, and the grant $JS.API.STREAM.MSG.GET.%s; no answer at all is most often the grant missing): %w",
			messages.StreamEvents, messages.StreamEvents, err)
	}
	sub := &subscriber{
		consumer:    consumer,
		concurrency: w.cfg.Concurrency,
		leasePeriod: w.cfg.AckWait / 3,
		log:         w.log,
		work:        w.work,
		onUnsettled: w.unsettled,
		handBack:    w.handBack,
		paused:      w.breaker.paused,
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: w.cfg.DrainTimeout + time.Second},
		watermill.NewSlogLoggerWithLevelMapping(w.log, map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug}))
	if err != nil {
		return err
	}
	router.AddConsumerHandler("commands", messages.SubjectConsumerFilter, sub, w.process)

	var drainTimer *time.Timer
	var once sync.Once
	go func() {
		<-ctx.Done()
		once.Do(func() {
			w.log.Info("draining: no new commands; waiting for those in flight", "budget", w.cfg.DrainTimeout.String())
			w.breaker.stop() // the commands held for the ledger are handed back at once
			w.line.stop()    // and so are those waiting for their wallet's line
			drainTimer = time.AfterFunc(w.cfg.DrainTimeout, func() {
				w.log.Warn("drain budget spent; handing back the commands still in flight")
				w.Abort()
			})
		})
	}()
	err = router.Run(ctx)
	w.pool.stopIdle() // its idle goroutines end
	once.Do(func() {})
	if drainTimer != nil {
		drainTimer.Stop()
	}
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	return nil
}

// process is the router's handler: it decides and settles one delivery. It
// returns nil once the delivery is settled; a panic below is recovered by the
// router, which Nacks the message, and the subscriber then calls unsettled.
func (w *Worker) process(wm *message.Message) error {
	d := deliveryFrom(wm.Context())
	if d == nil {
		return errors.New("worker: message without delivery")
	}
	w.cfg.Metrics.received(d)
	defer w.cfg.Metrics.done()
	ctx := w.startSpan(wm.Context(), d)
	defer d.span.End()
	w.pool.run(func() { w.handle(ctx, d) })
	return nil
}

func (w *Worker) handle(ctx context.Context, d *delivery) {
	defer func() {
		if d.eventDone != nil {
			// Its event was not written (a failed settle, a hand-back):
			// the next command of its chain must not write its own.
			d.eventDone.end(false)
			d.eventDone = nil
		}
	}()
	key, keyErr := messages.ParseKey(d.msg.Headers()[messages.HeaderMsgID])
	if keyErr != nil {
		key = firstHeader(d, messages.HeaderMsgID)
	}
	// Whatever becomes of d, the first command of its wallet waiting here
	// is woken to ask the stream again (line.left).
	wallet := messages.WalletFromSubject(d.subject)
	defer w.line.left(wallet)
	kind, token, known := w.kinds.Of(d.subject)
	d.kind = token
	if !known {
		d.kind = messages.KindUnknown
		w.settle(ctx, d, handlers.UnknownKind(key, d.subject, token))
		return
	}
	cmd, cmdErr := kind.Decode(d.subject, d.msg.Data())
	if err := errors.Join(keyErr, cmdErr); err != nil {
		w.settle(ctx, d, kind.Reject(key, d.subject, cmd, messages.CodeInvalidCommand, err.Error()))
		return
	}

	if d.delivered > 1 {
		// An earlier delivery may have stored the outcome and lost the
		// ack: deciding again could contradict the stored event.
		found, err := w.storedOutcome(ctx, d, wallet, key)
		if err != nil {
			w.log.Debug("could not look for a stored outcome; deciding again", w.logAttrs(d, key, "error", err)...)
		}
		if found {
			w.settledBefore(ctx, d, key, false)
			return
		}
	}

	if d.delivered > uint64(w.cfg.MaxDeliver) {
		// The command was given up on at delivery MaxDeliver, and that
		// settle was lost (or its worker died before it): settle the same
		// way again rather than try once more, so that a stored
		// RETRIES_EXHAUSTED event is not contradicted by a late write.
		// Unless that delivery wrote and its worker died before the event:
		// the replays, which write nothing, find it applied.
		r, unknown := w.replay(ctx, d, key)
		if r != nil {
			w.settle(ctx, d, r)
			return
		}
		if unknown && w.canHandBack(d) {
			// The ledger could not say whether the last delivery wrote
			// (down, or failing): ask again on a later delivery rather
			// than settle RETRIES_EXHAUSTED for what it may hold.
			w.log.Debug("replay check past the budget could not reach the ledger; will ask again", w.logAttrs(d, key)...)
			w.nak(d, w.cfg.Backoff.Delay(d.delivered), retryTransient)
			return
		}
		w.settle(ctx, d, kind.Reject(key, d.subject, cmd, messages.CodeRetriesExhausted,
			fmt.Sprintf("delivered %d times, past the retry budget of %d", d.delivered, w.cfg.MaxDeliver)))
		return
	}

	// Its turn in its wallet's line (SPEC §8): every earlier command of the
	// wallet settled.
	rode, ok := w.awaitTurn(ctx, d, key, wallet, cmd)
	if !ok {
		return
	}
	if rode != nil {
		// Decided in its head's chain.
		if rode.Err == nil {
			w.settle(ctx, d, rode.Result)
		} else {
			w.failed(ctx, d, key, kind, cmd, rode.Err)
		}
		return
	}

	// An attempt window: HandlerTimeout counts from the moment the
	// delivery gets a slot, and again from the moment it leaves a hold (its
	// lease covered the wait). Claim deferrals wait within the window.
	var hctx context.Context
	var opened time.Time
	cancel := context.CancelFunc(func() {})
	defer func() { cancel() }()
	window := func() {
		cancel()
		opened = time.Now()
		hctx, cancel = context.WithDeadline(ctx, opened.Add(w.cfg.HandlerTimeout))
		d.lease.holdUntil(opened.Add(w.cfg.HandlerTimeout + w.cfg.SettleTimeout))
	}
	window()

	// A trial the breaker let through is recorded whatever becomes of it:
	// one that panics records nothing on its own, and the breaker would stay
	// half-open with no prober, holding every other command for good.
	unrecorded := false
	defer func() {
		if unrecorded {
			w.breaker.record(d, true, resultOther, nil)
		}
	}()

	waited, wasHeld := false, false
	var lastErr error
	for {
		held, trial, err := w.breaker.pass(ctx, d)
		if err != nil {
			// A drain (or an abort) while the command waited for the ledger.
			if lastErr == nil {
				lastErr = err
			}
			if w.canHandBack(d) {
				w.handBack(d)
			} else {
				w.failed(ctx, d, key, kind, cmd, lastErr)
			}
			return
		}
		if held || wasHeld {
			window()
			wasHeld = false
		}
		unrecorded = trial
		outcome, err := w.decide(hctx, d, key, wallet, cmd)
		unrecorded = false
		hold := w.breaker.record(d, trial, classify(hctx, err), err)
		if err == nil {
			w.settle(ctx, d, outcome)
			return
		}
		lastErr = err
		if hold {
			w.log.Debug("ledger unavailable; command held", w.logAttrs(d, key, "error", err)...)
			if d.span != nil {
				d.span.AddEvent("held: ledger unavailable")
			}
			d.lease.holdUntil(time.Time{})
			wasHeld = true
			continue
		}
		retry, _ := handlers.AsRetry(err)
		if retry != nil && retry.NoTimeLeft && time.Since(opened) >= w.cfg.HandlerTimeout/2 {
			// A ledger call was not sent: the window ran short while it
			// waited for its turn (after an outage, a burst). No attempt
			// was made, so none is counted and no backoff applies: a new
			// window, at once. One refused with half its window still
			// left fails as usual, so that a ledger slower than any window
			// cannot keep a command turning here.
			w.log.Debug("ledger call not sent for lack of time; new attempt window", w.logAttrs(d, key, "error", err)...)
			w.cfg.Metrics.noTimeLeft()
			window()
			continue
		}
		if retry != nil && retry.Deferred {
			wait := jitter(retry.Delay, w.cfg.Backoff.Jitter)
			if dl, _ := hctx.Deadline(); time.Until(dl) > wait {
				if !waited {
					waited = true
					w.stats.Deferred.Add(1)
					w.cfg.Metrics.claimWait()
				}
				select {
				case <-time.After(wait):
					continue
				case <-hctx.Done():
				}
			}
		}
		w.failed(ctx, d, key, kind, cmd, err)
		return
	}
}

// decide decides d, the head of its wallet's line: alone, or with the
// commands of its wallet waiting right behind it here when its command
// rides a chain (handlers.Chain). Each rider gets its own answer; the
// head's is returned.
func (w *Worker) decide(ctx context.Context, d *delivery, key, wallet string, cmd handlers.Command) (handlers.Result, error) {
	chain := handlers.ChainOf(cmd)
	if chain == nil || w.line.order != OrderWallet || wallet == messages.UnknownWallet {
		return cmd.Handle(ctx, key)
	}
	riders := w.line.board(ctx, wallet, d.seq, chain)
	if len(riders) == 0 {
		return cmd.Handle(ctx, key)
	}
	answered := 0
	defer func() {
		// A rider must get an answer, even if the chain panicked: one not
		// decided waits for its turn again.
		for _, r := range riders[answered:] {
			r.answer <- handlers.ChainAnswer{NotRun: true}
		}
	}()
	cmds := append(make([]handlers.Command, 0, len(riders)+1), cmd)
	keys := append(make([]string, 0, len(riders)+1), key)
	for _, r := range riders {
		cmds, keys = append(cmds, r.cmd), append(keys, r.key)
	}
	if d.span != nil {
		d.span.AddEvent("decided with the commands of its wallet behind it", trace.WithAttributes(attribute.Int("riders", len(riders))))
	}
	answers, panicked := runChain(ctx, chain, cmds, keys)
	if panicked != nil {
		// The chain failed in code any of its commands may have reached:
		// the riders wait for their turn again (the deferred NotRun), and
		// the head is decided alone, so that a rider's fault does not
		// spend the head's deliveries.
		w.log.Error("chain panicked; its first command is decided alone", w.logAttrs(d, key, "panic", panicked, "riders", len(riders))...)
		return cmd.Handle(ctx, key)
	}
	// Each rider stores its event after the one before it in the chain.
	if d.eventDone == nil {
		d.eventDone = newEventTurn()
	}
	turn := d.eventDone
	for i, r := range riders {
		a := answers[i+1]
		if r.d.span != nil {
			r.d.span.AddEvent("decided in the chain of an earlier command of its wallet", trace.WithAttributes(attribute.Int64("head_seq", int64(d.seq))))
		}
		if !a.NotRun {
			r.d.eventTurn, r.d.eventDone = turn, newEventTurn()
			turn = r.d.eventDone
			w.stats.Chained.Add(1)
			w.cfg.Metrics.chained(1)
		}
		r.answer <- a
		answered++
	}
	return answers[0].Result, answers[0].Err
}

// awaitTurn waits until d is the head of its wallet's line, its lease held
// meanwhile. It returns false when d was handed back instead: drained, or
// after waiting a whole AckWait in its slot (given up so that the head, if
// it is to be redelivered, can be pulled), or past line.handBackDue's other
// bounds. When a head took d along in its
// chain, it returns the answer the chain gave d.
func (w *Worker) awaitTurn(ctx context.Context, d *delivery, key, wallet string, cmd handlers.Command) (*handlers.ChainAnswer, bool) {
	d.lease.holdUntil(time.Time{})
	var behind uint64
	inSlot := func() {}
	wt := newWaiter(d, cmd, key)
again:
	waited, err := w.line.await(ctx, wt, wallet, func(head uint64) {
		if behind == 0 {
			w.stats.OrderWaits.Add(1)
			w.cfg.Metrics.orderWait(1)
			w.log.Debug("waiting for an earlier command of the wallet", w.logAttrs(d, key, "wallet", wallet, "head_seq", head)...)
			if d.span != nil {
				d.span.AddEvent("waiting for the wallet's line")
			}
			if !d.stepAside() { // its slot to others meanwhile
				inSlot = d.waitInSlot()
			}
		} else if !d.aside && d.stepAside() {
			// Room aside came free since: a waiter there is not handed
			// back (handBackDue).
			inSlot()
			inSlot = func() {}
		}
		behind = max(head, behind, 1)
	})
	inSlot()
	inSlot = func() {}
	if errors.Is(err, errRiding) {
		a := <-wt.answer
		if a.NotRun {
			// A command before it in the chain is to be retried: d waits
			// behind it again.
			wt = newWaiter(d, cmd, key)
			if !d.aside && behind != 0 {
				inSlot = d.waitInSlot()
			}
			goto again
		}
		// Settled from aside: the subscriber gives back the aside room
		// rather than a slot.
		if behind != 0 {
			w.cfg.Metrics.orderWait(-1)
		}
		return &a, true
	}
	aside := d.aside
	d.stepIn(linePollMax)
	if behind != 0 {
		w.cfg.Metrics.orderWait(-1)
		if waited >= time.Second {
			w.log.Info("command waited for an earlier command of its wallet", w.logAttrs(d, key, "wallet", wallet,
				"waited", waited.Round(time.Millisecond).String(), "head_seq", behind)...)
		}
	}
	switch {
	case err == nil:
		return nil, true
	case errors.Is(err, errSettledElsewhere):
		w.settledBefore(ctx, d, key, true)
	case errors.Is(err, errLineWait) && w.canHandBack(d):
		w.log.Warn("command handed back after waiting for its wallet's line", w.logAttrs(d, key, "wallet", wallet, "head_seq", behind,
			"waited", waited.Round(time.Millisecond).String(), "aside", aside)...)
		w.nak(d, time.Second, retryOrder)
	case errors.Is(err, errLineWait):
		return nil, true // JetStream would not deliver it again: go ahead
	case w.canHandBack(d):
		w.handBack(d)
	default:
		w.handle(context.WithoutCancel(w.work), d)
	}
	return nil, false
}

// failed settles a delivery whose handling failed transiently, or that waited
// for another command's claim until its deadline.
func (w *Worker) failed(ctx context.Context, d *delivery, key string, kind handlers.Kind, cmd handlers.Command, err error) {
	if errors.Is(context.Cause(ctx), ErrShutdown) && w.canHandBack(d) {
		w.handBack(d)
		return
	}
	if d.delivered >= uint64(w.cfg.MaxDeliver) {
		msg := fmt.Sprintf("gave up after %d deliveries; last error: %v", d.delivered, err)
		w.settle(ctx, d, kind.Reject(key, d.subject, cmd, messages.CodeRetriesExhausted, msg))
		return
	}
	if retry, ok := handlers.AsRetry(err); ok && retry.Deferred {
		// Not a failure: the claim's holder is still at work. Look again
		// shortly. It is a delivery all the same, so the budget bounds it.
		w.nak(d, jitter(retry.Delay, w.cfg.Backoff.Jitter), retryDeferred)
		return
	}
	delay := w.cfg.Backoff.Delay(d.delivered)
	d.traceOutcome(traceRetry, "", err)
	w.log.Debug("command failed; will retry", w.logAttrs(d, key, "error", err, "retry_in", delay.Round(time.Millisecond).String())...)
	w.nak(d, delay, retryTransient)
}

// canHandBack reports whether JetStream will deliver d again after a NAK: the
// consumer stops after MaxDeliver + serverMaxDeliverMargin deliveries.
func (w *Worker) canHandBack(d *delivery) bool {
	return d.delivered < uint64(w.cfg.MaxDeliver+serverMaxDeliverMargin)
}

// replay is the outcome of d, delivered past the retry budget, when
// cfg.Replays find its command applied: replayed, decided without writing.
// Nil otherwise: with unknown set when the ledger could not answer (the
// breaker has it down, or the check failed as a retry would), unset when
// the replays found the command not applied or cannot tell (a panic, no
// kind).
func (w *Worker) replay(ctx context.Context, d *delivery, key string) (r handlers.Result, unknown bool) {
	if w.cfg.Replays == nil {
		return nil, false
	}
	kind, _, ok := w.cfg.Replays.Of(d.subject)
	if !ok {
		return nil, false
	}
	cmd, err := kind.Decode(d.subject, d.msg.Data())
	if err != nil {
		return nil, false
	}
	if !w.breaker.ledgerState().Available {
		return nil, true
	}
	defer func() {
		if p := recover(); p != nil {
			w.log.Error("replay check panicked; settling as past the budget", w.logAttrs(d, key, "panic", fmt.Sprint(p))...)
			r, unknown = nil, false
		}
	}()
	d.lease.holdUntil(time.Now().Add(w.cfg.HandlerTimeout + w.cfg.SettleTimeout))
	hctx, cancel := context.WithTimeout(ctx, w.cfg.HandlerTimeout)
	defer cancel()
	res, err := cmd.Handle(hctx, key)
	if err != nil {
		_, retryable := handlers.AsRetry(err)
		w.log.Debug("replay check past the budget failed", w.logAttrs(d, key, "error", err, "retryable", retryable)...)
		return nil, retryable
	}
	if res == nil || res.Code() != "" || !res.Replayed() {
		return nil, false
	}
	return res, false
}

// unsettled handles a delivery the router gave up on without settling it (a
// recovered panic): it is retried like any transient failure.
func (w *Worker) unsettled(d *delivery) {
	w.stats.Panics.Add(1)
	key := firstHeader(d, messages.HeaderMsgID)
	kind, _, known := w.kinds.Of(d.subject)
	if !known {
		// Settled at once when it arrived; a panic there is retried as
		// any would be, and settles the same way on its redelivery.
		w.nak(d, w.cfg.Backoff.Delay(d.delivered), retryTransient)
		return
	}
	cmd, _ := kind.Decode(d.subject, d.msg.Data())
	w.failed(w.work, d, key, kind, cmd, errors.New("handler panicked"))
}

// Reasons of wallets_worker_retries_total.
const (
	retryTransient = "transient"
	retryDeferred  = "deferred"
	retryShutdown  = "shutdown"
	retryOrder     = "order" // waited a whole AckWait for its wallet's line
)

func (w *Worker) nak(d *delivery, delay time.Duration, reason string) {
	if !d.settled.CompareAndSwap(false, true) {
		return
	}
	w.stats.Retried.Add(1)
	w.cfg.Metrics.retried(reason)
	d.traceNak(reason)
	if err := d.msg.NakWithDelay(delay); err != nil {
		w.log.Warn("nak failed; JetStream redelivers after ack wait", w.logAttrs(d, "", "error", err)...)
	}
}

// handBack returns a delivery the worker will not handle now (shutdown) for
// immediate redelivery, to this worker after a restart or to another one.
// Nothing failed, so the delay is the smallest positive one: a bare NAK (delay
// 0) only queues the message in the server's memory, and a server that stops
// right after (the embedded one) forgets it, leaving the command leased until
// its AckWait runs out; a delay is stored with the consumer's state.
func (w *Worker) handBack(d *delivery) {
	if !w.canHandBack(d) {
		// JetStream would not deliver it again: settle it now, on a
		// context that shutdown does not cancel.
		w.handle(context.WithoutCancel(w.work), d)
		return
	}
	if !d.settled.CompareAndSwap(false, true) {
		return
	}
	w.stats.HandedBack.Add(1)
	w.cfg.Metrics.retried(retryShutdown)
	if err := d.msg.NakWithDelay(time.Millisecond); err != nil {
		w.log.Warn("hand back failed; JetStream redelivers after ack wait", w.logAttrs(d, "", "error", err)...)
	}
}

func jitter(d time.Duration, factor float64) time.Duration {
	if d <= 0 || factor <= 0 {
		return d
	}
	delta := factor * float64(d)
	return time.Duration(float64(d) - delta + rand.Float64()*2*delta)
}

func firstHeader(d *delivery, name string) string {
	if v := d.msg.Headers()[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (w *Worker) logAttrs(d *delivery, key string, extra ...any) []any {
	if key == "" {
		key = firstHeader(d, messages.HeaderMsgID)
	}
	return d.traceLog(append([]any{"key", key, "subject", d.subject, "seq", d.seq, "delivery", d.delivered}, extra...))
}

// runChain runs chain.Handle, recovering a panic.
func runChain(ctx context.Context, chain *handlers.Chain, cmds []handlers.Command, keys []string) (answers []handlers.ChainAnswer, panicked any) {
	defer func() {
		if r := recover(); r != nil {
			answers, panicked = nil, r
		}
	}()
	return chain.Handle(ctx, cmds, keys), nil
}
