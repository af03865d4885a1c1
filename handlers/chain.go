package handlers

import (
	"context"
	"errors"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// DefaultChainLength is how many commands of one wallet a Chain sends to
// the ledger in one request at most.
const DefaultChainLength = 32

// ChainLedger is what a Chain needs of the ledger (*ledgeradapter.Client).
type ChainLedger interface {
	ListTransactions(ctx context.Context, ledger string, filter map[string]any, pageSize int, cursor string) (ledgeradapter.TransactionsPage, error)
	ChainTransactions(ctx context.Context, ledger string, elems []ledgeradapter.BulkTransaction) ([]ledgeradapter.BulkTransactionResult, error)
}

// Chain decides consecutive commands of one wallet together: their
// transactions go to the ledger in one ordered bulk, which runs them one
// after another (docs/ordering.md, "Chains"). Only commands whose whole
// write is one transaction, decided without reading the ledger, ride a
// chain (Chained); the others are decided alone.
//
// What a chain answers is what each command's Handle would have answered:
//   - An element applied is the command applied, replayed when the ledger
//     answered a transaction that was already there. A bulk does not say
//     which elements were idempotency hits, so the chain reads the newest
//     transaction of the ledger before it sends: a transaction with an ID
//     up to that one, or up to one the chain created before it, was there
//     already. Transaction IDs grow with every transaction of a ledger.
//   - An element that failed was not applied (each element is atomic), so
//     it is decided again alone, by its Handle, which tells a reused key
//     from a reused reference, or retries, exactly as without a chain. So
//     is the first of a bulk the client refused to send (a key the ledger
//     would not take, say): nothing of it applied.
//   - The ledger runs nothing after a failed element (ChainTransactions);
//     the elements after it go in a new bulk once the failed one is
//     decided, or are answered NotRun when it must be retried: they stay
//     behind it.
//   - Only the head (the first command) is answered a retry. A command
//     behind it whose turn ends in a failure that is not its own decision
//     (the whole bulk failed, a read failed), or whose own decision is a
//     retry, is answered NotRun: it waits for its turn again, and is then
//     decided as a head, with the worker's breaker and backoff, rather
//     than spend a delivery here.
type Chain struct {
	Ledger ChainLedger
	// Length caps the commands of one chain (default DefaultChainLength,
	// at most ledgeradapter.MaxBulkSize).
	Length int
}

// MaxLength is how many commands one call to Handle decides together.
func (c *Chain) MaxLength() int {
	if c.Length <= 0 {
		return DefaultChainLength
	}
	return min(c.Length, ledgeradapter.MaxBulkSize)
}

// Chained is a command that may ride a chain with the commands of its
// wallet next to it in the line.
type Chained interface {
	Command
	// Chain is the chain the command rides, nil when it must be decided
	// alone (a read of the ledger decides it, or it makes several writes).
	Chain() *Chain
	// link is the command's one transaction and how it ends.
	link(key string) link
}

// ChainOf is the chain cmd may ride, nil if none.
func ChainOf(cmd Command) *Chain {
	if c, ok := cmd.(Chained); ok {
		return c.Chain()
	}
	return nil
}

// link is a chained command's one transaction, the outcome of it applied,
// and the outcome of a failure of the chain's request as a whole.
type link struct {
	ledger  string
	request ledgeradapter.TransactionRequest
	key     string
	applied func(tx ledgeradapter.Transaction, replayed bool) Result
	failure func(op string, err error) (Result, error)
}

// ChainAnswer is what became of one command of a chain: Handle's answer,
// or NotRun when the ledger did not run it because a command before it
// must be retried; it was not decided, and is to be decided after that one.
type ChainAnswer struct {
	Result Result
	Err    error
	NotRun bool
}

// Handle decides cmds, consecutive commands of one wallet in their line's
// order, each riding c (a command that does not, and every one after it,
// is answered NotRun). keys are their keys. One command is decided by its
// own Handle.
func (c *Chain) Handle(ctx context.Context, cmds []Command, keys []string) []ChainAnswer {
	out := make([]ChainAnswer, len(cmds))
	if len(cmds) == 1 {
		out[0].Result, out[0].Err = cmds[0].Handle(ctx, keys[0])
		return out
	}
	links := make([]link, 0, len(cmds))
	for i, cmd := range cmds {
		ch, ok := cmd.(Chained)
		if !ok || ch.Chain() != c {
			break
		}
		l := ch.link(keys[i])
		if i > 0 && l.ledger != links[0].ledger {
			break
		}
		links = append(links, l)
	}
	notRun := func(from int) []ChainAnswer {
		for i := from; i < len(out); i++ {
			out[i] = ChainAnswer{NotRun: true}
		}
		return out
	}
	if len(links) == 0 {
		out[0].Result, out[0].Err = cmds[0].Handle(ctx, keys[0])
		return notRun(1)
	}
	ledger := links[0].ledger

	// newest is the highest transaction ID known to predate what the chain
	// sends next (ok false: the ledger had none).
	var newest uint64
	var known bool
	readNewest := func() error {
		page, err := c.Ledger.ListTransactions(ctx, ledger, nil, 1, "")
		if err != nil {
			return err
		}
		if len(page.Data) > 0 && (!known || page.Data[0].ID > newest) {
			newest, known = page.Data[0].ID, true
		}
		return nil
	}
	if err := readNewest(); err != nil {
		out[0].Result, out[0].Err = links[0].failure("read the newest transaction", err)
		return notRun(1)
	}
	// alone decides command k, which failed in a bulk or could not be sent
	// in one, by its own Handle, and reads the newest transaction again
	// (Handle may have applied it). It reports whether the chain stops:
	// after a retry of the head, or of a rider, which then waits for its
	// turn again, as do those after it.
	alone := func(k int) bool {
		out[k].Result, out[k].Err = cmds[k].Handle(ctx, keys[k])
		if out[k].Err != nil {
			if k > 0 {
				// A rider's retry: it goes back to its line and is
				// decided as a head, breaker and backoff included.
				notRun(k)
			} else {
				notRun(k + 1)
			}
			return true
		}
		if k+1 < len(links) && readNewest() != nil {
			notRun(k + 1)
			return true
		}
		return false
	}
	for i := 0; i < len(links); {
		end := min(len(links), i+c.MaxLength())
		elems := make([]ledgeradapter.BulkTransaction, 0, end-i)
		for _, l := range links[i:end] {
			elems = append(elems, ledgeradapter.BulkTransaction{Request: l.request, IdempotencyKey: l.key})
		}
		res, err := c.Ledger.ChainTransactions(ctx, ledger, elems)
		switch {
		case err != nil && (!sent(err) || !ledgeradapter.IsRetryable(err)):
			// Refused before it was sent (one element's key, say), or by
			// the ledger whole, before it ran any element (a 4xx without
			// per-element results), so nothing applied: the first is
			// decided alone, which tells its own fault from another's, and
			// the rest go on after it.
			if alone(i) {
				return out
			}
			i++
			continue
		case err != nil && i == 0:
			// Whether any of it applied is unknown: the head is retried
			// (its key replays what applied), the others wait behind it.
			out[0].Result, out[0].Err = links[0].failure("create transactions", err)
			return notRun(1)
		case err != nil:
			// The same behind a rider: none of them decided, each waits
			// for its turn again.
			return notRun(i)
		}
		next := end
		for j, r := range res {
			k := i + j
			if r.Err == nil {
				tx := r.Transaction
				replayed := known && tx.ID <= newest
				if !replayed {
					newest, known = tx.ID, true
				}
				out[k].Result = links[k].applied(tx, replayed)
				continue
			}
			if errors.Is(r.Err, ledgeradapter.ErrNotRun) {
				continue
			}
			// The element failed and applied nothing: decided alone, its
			// answer is exactly Handle's.
			if alone(k) {
				return out
			}
			next = k + 1
			break
		}
		i = next
	}
	return notRun(len(links))
}

// sent reports whether a failed request reached the ledger: an
// *ledgeradapter.Error without a method was refused by the client first.
func sent(err error) bool {
	var le *ledgeradapter.Error
	return !errors.As(err, &le) || le.Method != ""
}
