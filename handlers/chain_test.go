package handlers_test

import (
	"context"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

// requestLog counts the ledger requests by method and path suffix.
type requestLog struct {
	mu   sync.Mutex
	seen []string
	// fail500 answers this many _bulk requests 500 before passing them;
	// fail400 this many 400 VALIDATION, the bulk refused whole.
	fail500, fail400 int
}

func (l *requestLog) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		l.mu.Lock()
		l.seen = append(l.seen, r.Method+" "+p)
		fail := p == "_bulk" && l.fail500 > 0
		if fail {
			l.fail500--
		}
		refuse := p == "_bulk" && !fail && l.fail400 > 0
		if refuse {
			l.fail400--
		}
		l.mu.Unlock()
		if refuse {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"errorCode":"VALIDATION","errorMessage":"injected"}`))
			return
		}
		if fail {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"errorCode":"INTERNAL","errorMessage":"injected"}`))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (l *requestLog) count(what string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.seen {
		if s == what {
			n++
		}
	}
	return n
}

type chainFixture struct {
	ctx    context.Context
	log    *requestLog
	chain  *handlers.Chain
	credit *handlers.CreditWallet
	debit  *handlers.DebitWallet
	client handlers.TxLedger
}

func newChainFixture(t *testing.T) *chainFixture {
	t.Helper()
	log := &requestLog{}
	l := testutil.StartLedger(t, testutil.LedgerOptions{Wrap: log.wrap})
	ctx := context.Background()
	require.NoError(t, l.Client.EnsureLedger(ctx, "wallets-002"))
	chain := &handlers.Chain{Ledger: l.Client}
	return &chainFixture{ctx: ctx, log: log, chain: chain, client: l.Client,
		credit: &handlers.CreditWallet{Ledger: l.Client, LedgerName: "wallets-002", Chain: chain},
		debit:  &handlers.DebitWallet{Ledger: l.Client, LedgerName: "wallets-002", Chain: chain}}
}

func (f *chainFixture) command(t *testing.T, kind, body string) handlers.Command {
	t.Helper()
	var k handlers.Kind = handlers.CreditWalletKind(f.credit)
	if kind == messages.KindDebitWallet {
		k = handlers.DebitWalletKind(f.debit)
	}
	cmd, err := k.Decode("wallets.commands."+kind+".w1", []byte(body))
	require.NoError(t, err)
	return cmd
}

// creditDebitCredit decides a chain of three, a credit of 10, a debit of 10
// and a credit of 3 under keys a, b and c, and returns them and their
// answers.
func (f *chainFixture) creditDebitCredit(t *testing.T) ([]handlers.Command, []handlers.ChainAnswer) {
	t.Helper()
	cmds := []handlers.Command{
		f.command(t, messages.KindCreditWallet, creditOf(10)),
		f.command(t, messages.KindDebitWallet, creditOf(10)),
		f.command(t, messages.KindCreditWallet, creditOf(3)),
	}
	return cmds, f.chain.Handle(f.ctx, cmds, []string{"a", "b", "c"})
}

func creditOf(n int) string {
	return fmt.Sprintf(`{"walletID":"w1","amount":{"asset":"USD/2","amount":%d}}`, n)
}

// TestChainAnswersAsEachCommandAlone: a chain's answers are those each
// command would get alone. A key applied before the chain (through the
// wallets API, say) replays, even as the chain's first element; a key
// repeated inside the chain replays the transaction made earlier in it; a
// refused debit is refused with its code, and the commands after it are
// applied in a second bulk.
func TestChainAnswersAsEachCommandAlone(t *testing.T) {
	t.Parallel()
	f := newChainFixture(t)

	before, err := f.client.CreateTransaction(f.ctx, "wallets-002",
		f.credit.Request(messages.CreditWallet{WalletID: "w1", Amount: messages.Monetary{Asset: "USD/2", Amount: big.NewInt(5)}}), "k0")
	require.NoError(t, err)
	// Another account moves after it, so that the key's transaction is not
	// simply the newest of the ledger.
	_, err = f.client.CreateTransaction(f.ctx, "wallets-002",
		f.credit.Request(messages.CreditWallet{WalletID: "other", Amount: messages.Monetary{Asset: "USD/2", Amount: big.NewInt(1)}}), "other")
	require.NoError(t, err)

	cmds := []handlers.Command{
		f.command(t, messages.KindCreditWallet, creditOf(5)),   // k0: applied before the chain
		f.command(t, messages.KindCreditWallet, creditOf(100)), // k1
		f.command(t, messages.KindDebitWallet, creditOf(80)),   // k2: covered by k0 and k1
		f.command(t, messages.KindDebitWallet, creditOf(1000)), // k3: not covered
		f.command(t, messages.KindCreditWallet, creditOf(7)),   // k4
		f.command(t, messages.KindCreditWallet, creditOf(100)), // k1 again: replays the chain's own
		f.command(t, messages.KindDebitWallet, creditOf(32)),   // k5: exactly what is left
	}
	keys := []string{"k0", "k1", "k2", "k3", "k4", "k1", "k5"}
	for _, c := range cmds {
		require.Same(t, f.chain, handlers.ChainOf(c))
	}
	answers := f.chain.Handle(f.ctx, cmds, keys)
	require.Len(t, answers, len(cmds))
	type got struct {
		event    string
		code     messages.Code
		replayed bool
		txID     uint64
	}
	var out []got
	for i, a := range answers {
		require.NoError(t, a.Err, "answer %d", i)
		require.False(t, a.NotRun, "answer %d", i)
		name, _, body := a.Result.Event()
		g := got{event: name, code: a.Result.Code(), replayed: a.Result.Replayed()}
		switch b := body.(type) {
		case messages.WalletCredited:
			g.txID = b.TransactionID
			require.Equal(t, b.Replayed, g.replayed)
		case messages.WalletDebited:
			g.txID = b.TransactionID
			require.Equal(t, b.Replayed, g.replayed)
		}
		out = append(out, g)
	}
	require.Equal(t, got{event: messages.EventWalletCredited, replayed: true, txID: before.Transaction.ID}, out[0],
		"a key applied before the chain replays, first in it or not")
	require.Equal(t, messages.EventWalletCredited, out[1].event)
	require.False(t, out[1].replayed)
	require.Greater(t, out[1].txID, before.Transaction.ID+1)
	require.Equal(t, messages.EventWalletDebited, out[2].event)
	require.False(t, out[2].replayed)
	require.Equal(t, got{event: messages.EventDebitWalletRejected, code: messages.CodeInsufficientFunds}, out[3])
	require.False(t, out[4].replayed)
	require.Greater(t, out[4].txID, out[2].txID)
	require.Equal(t, got{event: messages.EventWalletCredited, replayed: true, txID: out[1].txID}, out[5],
		"a key repeated in the chain replays the transaction made earlier in it")
	require.False(t, out[6].replayed)
	require.Greater(t, out[6].txID, out[4].txID)

	// Two bulks (the refusal stopped the first), the refused debit decided
	// alone (beside the two transactions made before the chain), and the
	// newest transaction read before each bulk.
	require.Equal(t, 2, f.log.count("POST _bulk"))
	require.Equal(t, 2+1, f.log.count("POST transactions"))
	require.Equal(t, 2, f.log.count("GET transactions"))

	a, found, err := f.client.GetAccount(f.ctx, "wallets-002", "wallets:w1:main")
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, "0", a.Volumes["USD/2"].Balance.String(), "5 + 100 - 80 + 7 - 32")
}

// TestChainThatFailsWholeRetriesItsFirst: when the bulk fails as a whole
// (a 500), the first command gets its retry and the others are not run:
// they stay behind it.
func TestChainThatFailsWholeRetriesItsFirst(t *testing.T) {
	t.Parallel()
	f := newChainFixture(t)
	f.log.fail500 = 1
	cmds, answers := f.creditDebitCredit(t)
	_, retry := handlers.AsRetry(answers[0].Err)
	require.True(t, retry, "the first is retried: %v", answers[0].Err)
	require.True(t, answers[1].NotRun)
	require.True(t, answers[2].NotRun)

	answers = f.chain.Handle(f.ctx, cmds, []string{"a", "b", "c"})
	for i, a := range answers {
		require.NoError(t, a.Err, "answer %d", i)
		require.False(t, a.Result.Replayed(), "nothing of the failed bulk applied")
	}
}

// TestChainRefusedWholeDecidesItsFirstAlone: a bulk the ledger refuses
// whole (a 400 without per-element results) applied nothing, and says
// nothing of which command it is about: the first is decided alone, not
// charged with the refusal, and the others go on after it.
func TestChainRefusedWholeDecidesItsFirstAlone(t *testing.T) {
	t.Parallel()
	f := newChainFixture(t)
	f.log.fail400 = 1
	_, answers := f.creditDebitCredit(t)
	for i, a := range answers {
		require.NoError(t, a.Err, "answer %d", i)
		require.False(t, a.NotRun, "answer %d", i)
		require.Empty(t, a.Result.Code(), "answer %d: %s", i, a.Result.Reason())
	}
	require.Equal(t, 2, f.log.count("POST _bulk"), "the refused bulk, then the two after the first")
}

// TestOnlyMoneyCommandsWithoutReadsRideChains: a credit to a named balance
// or a debit of named balances reads the ledger first, so it rides none.
func TestOnlyMoneyCommandsWithoutReadsRideChains(t *testing.T) {
	t.Parallel()
	f := newChainFixture(t)
	require.NotNil(t, handlers.ChainOf(f.command(t, messages.KindDebitWallet, `{"walletID":"w1","amount":{"asset":"USD/2","amount":1},"pending":true}`)))
	require.Nil(t, handlers.ChainOf(f.command(t, messages.KindCreditWallet, `{"walletID":"w1","amount":{"asset":"USD/2","amount":1},"balance":"savings"}`)))
	require.Nil(t, handlers.ChainOf(f.command(t, messages.KindDebitWallet, `{"walletID":"w1","amount":{"asset":"USD/2","amount":1},"balances":["main"]}`)))
	require.Nil(t, handlers.ChainOf(handlers.Command(nil)))
	f.credit.Chain = nil
	require.Nil(t, handlers.ChainOf(f.command(t, messages.KindCreditWallet, creditOf(1))))
}

// TestChainRiderWithABadKeyLeavesTheHeadAlone: a rider whose key the
// ledger client refuses (trailing white space) makes the bulk unsendable;
// the head is then decided alone and applied, and the rider gets the
// answer it would get alone, not the head's. The worker itself no longer
// takes such a key (messages.ValidateKey refuses a space at either end,
// which NATS would trim), but a chain must not charge its head with a
// rider's refusal, whatever refuses it.
func TestChainRiderWithABadKeyLeavesTheHeadAlone(t *testing.T) {
	t.Parallel()
	f := newChainFixture(t)
	rider := f.command(t, messages.KindCreditWallet, creditOf(3))
	aloneRes, err := rider.Handle(f.ctx, "b ")
	require.NoError(t, err)
	answers := f.chain.Handle(f.ctx, []handlers.Command{f.command(t, messages.KindCreditWallet, creditOf(10)), rider}, []string{"a", "b "})
	require.NoError(t, answers[0].Err)
	require.Empty(t, answers[0].Result.Code(), "the head is applied: %s", answers[0].Result.Reason())
	require.NoError(t, answers[1].Err)
	require.Equal(t, aloneRes.Code(), answers[1].Result.Code())
	require.NotEmpty(t, answers[1].Result.Code())
}

// TestChainNeverChargesARiderForAnotherFailure: after a refused debit is
// decided alone, the read of the newest transaction fails (503): the
// command after it was never sent, and is answered NotRun, not a retry.
func TestChainNeverChargesARiderForAnotherFailure(t *testing.T) {
	t.Parallel()
	var gets atomic.Int32
	wrap := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/transactions") && gets.Add(1) == 2 {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte(`{"errorCode":"INTERNAL","errorMessage":"injected"}`))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	l := testutil.StartLedger(t, testutil.LedgerOptions{Wrap: wrap})
	require.NoError(t, l.Client.EnsureLedger(context.Background(), "wallets-002"))
	chain := &handlers.Chain{Ledger: l.Client}
	f := &chainFixture{ctx: context.Background(), chain: chain,
		credit: &handlers.CreditWallet{Ledger: l.Client, LedgerName: "wallets-002", Chain: chain},
		debit:  &handlers.DebitWallet{Ledger: l.Client, LedgerName: "wallets-002", Chain: chain}}
	answers := chain.Handle(f.ctx, []handlers.Command{
		f.command(t, messages.KindCreditWallet, creditOf(10)),
		f.command(t, messages.KindDebitWallet, creditOf(1000)), // refused
		f.command(t, messages.KindCreditWallet, creditOf(3)),
	}, []string{"a", "b", "c"})
	require.NoError(t, answers[0].Err)
	require.NoError(t, answers[1].Err)
	require.Equal(t, messages.CodeInsufficientFunds, answers[1].Result.Code())
	require.NoError(t, answers[2].Err, "a command never sent is not charged a retry")
	require.True(t, answers[2].NotRun)
}
