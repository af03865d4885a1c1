package worker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

type claimBundle struct {
	js     jetstream.JetStream
	cfg    Config
	ledger *ledgeradapter.Client
}

// claimSetup starts NATS with the claims bucket and an embedded ledger whose
// account reads are held back by readDelay, so that concurrent commands all
// read "absent" before any of them writes: the race, made certain.
func claimSetup(t *testing.T, readDelay time.Duration) *claimBundle {
	t.Helper()
	_, js := testutil.Connect(t, testutil.NATS(t).ClientURL())
	cfg := Config{AckWait: 5 * time.Second, ClaimTTL: 2 * time.Second}
	require.NoError(t, Provision(context.Background(), js, cfg))

	client := testutil.StartLedger(t, testutil.LedgerOptions{Wrap: func(inner http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && readDelay > 0 {
				time.Sleep(readDelay)
			}
			inner.ServeHTTP(w, r)
		})
	}}).Client
	require.NoError(t, client.EnsureLedger(context.Background(), "claims"))
	return &claimBundle{js: js, cfg: cfg, ledger: client}
}

func TestClaimFirstWriterWins(t *testing.T) {
	t.Parallel()
	b := claimSetup(t, 0)
	ctx := context.Background()
	c, err := NewClaims(ctx, b.js, b.cfg)
	require.NoError(t, err)

	require.NoError(t, c.Claim(ctx, "claims", "wallets:w1:x", "key-a"))
	require.NoError(t, c.Claim(ctx, "claims", "wallets:w1:x", "key-a"), "the claimant may claim again (redelivery)")
	err = c.Claim(ctx, "claims", "wallets:w1:x", "key-b")
	require.ErrorIs(t, err, handlers.ErrClaimed)
	require.NoError(t, c.Claim(ctx, "claims", "wallets:w1:y", "key-b"), "claims are per balance")
	require.NoError(t, c.Claim(ctx, "other-ledger", "wallets:w1:x", "key-b"), "and per ledger")

	// A claimant that neither writes nor comes back blocks others only
	// until the claim's TTL.
	require.Eventually(t, func() bool {
		return c.Claim(ctx, "claims", "wallets:w1:x", "key-b") == nil
	}, 10*time.Second, 100*time.Millisecond)
	require.ErrorIs(t, c.Claim(ctx, "claims", "wallets:w1:x", "key-a"), handlers.ErrClaimed)
}

// raceBalances has three commands with different keys and fields race for
// each of n fresh balances, like three workers would, and settles deferred
// commands the way the worker does: try again after the delay. A write that
// lost a race to create its account (500 INTERNAL, as the real ledger
// answers, CONTRACT §3) is retried at once, as a redelivery would be, and
// counted in lostRaces.
func raceBalances(t *testing.T, b *claimBundle, claim handlers.Claimer, n int) (created, alreadyExists, lostRaces int, writesPerBalance map[string]int) {
	t.Helper()
	h := &handlers.CreateBalance{Ledger: b.ledger, LedgerName: "claims", Claim: claim, ClaimDeferral: 20 * time.Millisecond}
	type result struct {
		account string
		code    messages.Code
	}
	results := make(chan result, 3*n)
	var lost atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		for k := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := messages.CreateBalance{WalletID: fmt.Sprintf("w%d", i), Name: "race", Priority: int64(k)}
				key := fmt.Sprintf("b%d-k%d", i, k)
				for {
					out, err := h.Handle(context.Background(), key, cmd)
					if r, ok := handlers.AsRetry(err); ok && r.Deferred {
						time.Sleep(r.Delay)
						continue
					}
					var le *ledgeradapter.Error
					if errors.As(err, &le) && le.StatusCode == http.StatusInternalServerError && le.ErrorCode == "INTERNAL" {
						lost.Add(1)
						continue
					}
					if err != nil {
						t.Errorf("%s: %v", key, err)
						return
					}
					if out.Created != nil {
						results <- result{out.Created.Account, ""}
					} else {
						results <- result{handlers.AccountAddress("", cmd.WalletID, cmd.Name), out.Code()}
					}
					return
				}
			}()
		}
	}
	wg.Wait()
	close(results)
	for r := range results {
		switch r.code {
		case "":
			created++
		case messages.CodeAlreadyExists:
			alreadyExists++
		default:
			t.Errorf("%s: unexpected %s", r.account, r.code)
		}
	}
	logs, err := b.ledger.AllLogs(context.Background(), "claims")
	require.NoError(t, err)
	writesPerBalance = map[string]int{}
	for _, l := range logs {
		md, err := l.SetMetadata()
		require.NoError(t, err)
		writesPerBalance[md.TargetID]++
	}
	return created, alreadyExists, int(lost.Load()), writesPerBalance
}

func TestClaimClosesTheCreateRace(t *testing.T) {
	t.Parallel()
	const n = 100
	b := claimSetup(t, 100*time.Millisecond)
	claims, err := NewClaims(context.Background(), b.js, b.cfg)
	require.NoError(t, err)

	created, exists, lostRaces, writes := raceBalances(t, b, claims, n)
	require.Equal(t, n, created, "one created per balance")
	require.Zero(t, lostRaces, "no two writes of one balance at once")
	require.Equal(t, 2*n, exists, "the two other keys: ALREADY_EXISTS")
	require.Len(t, writes, n)
	for account, w := range writes {
		require.Equal(t, 1, w, "%s written once", account)
	}
	// The ledger holds the winner's fields: its marker and its priority
	// agree.
	for i := range n {
		acc, found, err := b.ledger.GetAccount(context.Background(), "claims", fmt.Sprintf("wallets:w%d:race", i))
		require.NoError(t, err)
		require.True(t, found)
		winners := 0
		for k := range 3 {
			if acc.Metadata[handlers.MarkerKey(fmt.Sprintf("b%d-k%d", i, k))] != "" {
				winners++
				require.Equal(t, fmt.Sprint(k), acc.Metadata[handlers.MetadataBalancePriority])
			}
		}
		require.Equal(t, 1, winners)
	}
}

func TestWithoutClaimTheRaceShows(t *testing.T) {
	t.Parallel()
	const n = 20
	b := claimSetup(t, 100*time.Millisecond)
	created, _, lostRaces, writes := raceBalances(t, b, nil, n)
	// Every command read "absent" and wrote: a write that overlapped
	// another one of its balance lost with a 500 (its retry then found the
	// balance), a later one overwrote it (last write wins, several markers
	// on one balance). Either is what the claim prevents.
	require.Greater(t, created+lostRaces, n, "more commands wrote than there are balances")
	doubled := 0
	for _, w := range writes {
		if w > 1 {
			doubled++
		}
	}
	require.Positive(t, doubled+lostRaces)
	t.Logf("%d balances: %d created, %d written more than once, %d writes lost a race", n, created, doubled, lostRaces)
}
