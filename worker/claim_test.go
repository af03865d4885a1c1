package worker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
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
// read "absent" before any of them writes: the race, made certain. Its
// claims outlive any attempt of these tests, however loaded the machine:
// the tests that want a claim to expire ask for a short one.
func claimSetup(t *testing.T, readDelay time.Duration) *claimBundle {
	t.Helper()
	return claimSetupWith(t, Config{AckWait: 5 * time.Second, ClaimTTL: time.Minute}, func(inner http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && readDelay > 0 {
				time.Sleep(readDelay)
			}
			inner.ServeHTTP(w, r)
		})
	})
}

// claimSetupWith provisions cfg's claims bucket and serves the ledger
// through wrap.
func claimSetupWith(t *testing.T, cfg Config, wrap func(http.Handler) http.Handler) *claimBundle {
	t.Helper()
	_, js := testutil.Connect(t, testutil.NATS(t).ClientURL())
	require.NoError(t, Provision(context.Background(), js, cfg))
	client := testutil.StartLedger(t, testutil.LedgerOptions{Wrap: wrap}).Client
	require.NoError(t, client.EnsureLedger(context.Background(), "claims"))
	return &claimBundle{js: js, cfg: cfg, ledger: client}
}

// claimsFor binds cfg's claims in b's bucket.
func (b *claimBundle) claimsFor(t *testing.T, cfg Config) *Claims {
	t.Helper()
	c, err := NewClaims(context.Background(), b.js, cfg)
	require.NoError(t, err)
	return c
}

func TestClaimFirstWriterWins(t *testing.T) {
	t.Parallel()
	b := claimSetup(t, 0)
	ctx := context.Background()
	c := b.claimsFor(t, b.cfg)

	require.NoError(t, c.Claim(ctx, "claims", "wallets:w1:x", "key-a"))
	require.NoError(t, c.Claim(ctx, "claims", "wallets:w1:x", "key-a"), "the claimant may claim again (redelivery)")
	err := c.Claim(ctx, "claims", "wallets:w1:x", "key-b")
	require.ErrorIs(t, err, handlers.ErrClaimed)
	require.NoError(t, c.Claim(ctx, "claims", "wallets:w1:y", "key-b"), "claims are per balance")
	require.NoError(t, c.Claim(ctx, "other-ledger", "wallets:w1:x", "key-b"), "and per ledger")

	// A claimant that neither writes nor comes back blocks others only
	// until the claim's TTL. The claims above live for a minute, so that a
	// loaded machine cannot let one expire between two steps; this one
	// lives for a second.
	short := b.cfg
	short.ClaimTTL = time.Second
	sc := b.claimsFor(t, short)
	require.NoError(t, sc.Claim(ctx, "claims", "wallets:w1:z", "key-a"))
	require.Eventually(t, func() bool {
		return sc.Claim(ctx, "claims", "wallets:w1:z", "key-b") == nil
	}, 30*time.Second, 100*time.Millisecond)
	require.ErrorIs(t, c.Claim(ctx, "claims", "wallets:w1:z", "key-a"), handlers.ErrClaimed)
}

// TestClaimantRedeliveryRenewsItsClaim: a claim must outlive every attempt
// of its claimant, not only the first. A redelivery that finds its own claim
// starts its TTL again; another key meets it until then, and gets the
// balance once the renewed claim expires.
func TestClaimantRedeliveryRenewsItsClaim(t *testing.T) {
	t.Parallel()
	b := claimSetup(t, 0)
	ctx := context.Background()
	const ttl = 3 * time.Second
	cfg := b.cfg
	cfg.ClaimTTL = ttl
	c := b.claimsFor(t, cfg)

	// A loaded machine can stall the test past the renewed claim's end;
	// such a round says nothing, and is done again on another balance.
	for round := range 3 {
		account := fmt.Sprintf("wallets:w1:renew%d", round)
		first := time.Now() // before the claim is stored: its TTL ends after first+ttl
		require.NoError(t, c.Claim(ctx, "claims", account, "key-a"))
		time.Sleep(ttl * 4 / 5)
		renewed := time.Now() // before the renewal is stored
		require.NoError(t, c.Claim(ctx, "claims", account, "key-a"), "a redelivery of the claimant")
		if time.Since(first) >= ttl {
			// The first claim may have expired: the redelivery then
			// claimed afresh instead of renewing.
			t.Logf("round %d: the redelivery came %s after the claim, past its TTL; again", round, time.Since(first))
			continue
		}
		// Past the first claim's TTL, within the renewed one's.
		time.Sleep(time.Until(first.Add(ttl * 13 / 10)))
		err := c.Claim(ctx, "claims", account, "key-b")
		if time.Since(renewed) >= ttl {
			t.Logf("round %d: checked %s after the renewal, past its TTL; again", round, time.Since(renewed))
			continue
		}
		require.ErrorIs(t, err, handlers.ErrClaimed, "the renewed claim holds %s after the first claim", time.Since(first))
		require.Eventually(t, func() bool {
			return c.Claim(ctx, "claims", account, "key-b") == nil
		}, 30*time.Second, 100*time.Millisecond, "the renewed claim still expires")
		return
	}
	t.Fatal("every round was stalled past the renewed claim's TTL")
}

// TestClaimantDeliveriesRenewAtOnce: deliveries of one command that renew its
// claim at the same moment all proceed (one renewal wins, the others find
// the claim still theirs at a newer revision); a rival still does not.
func TestClaimantDeliveriesRenewAtOnce(t *testing.T) {
	t.Parallel()
	b := claimSetup(t, 0)
	ctx := context.Background()
	c := b.claimsFor(t, b.cfg)
	for i := range 5 {
		account := fmt.Sprintf("wallets:w1:atonce%d", i)
		require.NoError(t, c.Claim(ctx, "claims", account, "key-a"))
		errs := make([]error, 8)
		var wg sync.WaitGroup
		for j := range errs {
			wg.Go(func() { errs[j] = c.Claim(ctx, "claims", account, "key-a") })
		}
		wg.Wait()
		for j, err := range errs {
			require.NoError(t, err, "delivery %d of the claimant", j)
		}
		require.ErrorIs(t, c.Claim(ctx, "claims", account, "key-b"), handlers.ErrClaimed)
	}
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
	claims := b.claimsFor(t, b.cfg)

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

// TestClaimWonAfterAnExpiredClaimReadsAgain is the race that a claim alone
// does not close: command B reads "absent", then command A reads, claims
// and writes the balance, A's claim expires, and only then does B claim. B
// wins the claim; its read is older than the write. It must not write.
func TestClaimWonAfterAnExpiredClaimReadsAgain(t *testing.T) {
	t.Parallel()
	cfg := Config{AckWait: time.Second, ClaimTTL: time.Second}
	require.NoError(t, cfg.Validate())
	// The first read of the balance is answered as the ledger had it when
	// the read arrived, but only once release is closed.
	var held atomic.Bool
	read, release := make(chan struct{}), make(chan struct{})
	b := claimSetupWith(t, cfg, func(inner http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/accounts/") || held.Swap(true) {
				inner.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			inner.ServeHTTP(rec, r)
			close(read)
			<-release
			maps.Copy(w.Header(), rec.Header())
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
		})
	})
	ctx := context.Background()
	claims := b.claimsFor(t, cfg)
	h := &handlers.CreateBalance{Ledger: b.ledger, LedgerName: "claims", Claim: claims, ClaimReadMaxAge: cfg.ClaimReadMaxAge()}
	cmd := func(priority int64) messages.CreateBalance {
		return messages.CreateBalance{WalletID: "w1", Name: "stale", Priority: priority}
	}

	type result struct {
		out handlers.Outcome
		err error
	}
	late := make(chan result, 1)
	go func() {
		out, err := h.Handle(ctx, "key-b", cmd(2))
		late <- result{out, err}
	}()
	select {
	case <-read:
	case <-time.After(30 * time.Second):
		t.Fatal("key-b's read never reached the ledger")
	}

	out, err := h.Handle(ctx, "key-a", cmd(1))
	require.NoError(t, err)
	require.NotNil(t, out.Created, "key-a creates the balance")
	kv, err := b.js.KeyValue(ctx, messages.BucketClaims)
	require.NoError(t, err)
	k := claimKey("claims", out.Created.Account)
	require.Eventually(t, func() bool {
		_, err := kv.Get(ctx, k)
		return errors.Is(err, jetstream.ErrKeyNotFound)
	}, 30*time.Second, 50*time.Millisecond, "key-a's claim expires")

	close(release)
	var r result
	select {
	case r = <-late:
	case <-time.After(30 * time.Second):
		t.Fatal("key-b never finished")
	}
	require.NoError(t, r.err)
	require.Nil(t, r.out.Created, "key-b must not write the balance key-a created")
	require.Equal(t, messages.CodeAlreadyExists, r.out.Code())

	acc, found, err := b.ledger.GetAccount(ctx, "claims", out.Created.Account)
	require.NoError(t, err)
	require.True(t, found)
	require.NotEmpty(t, acc.Metadata[handlers.MarkerKey("key-a")])
	require.Empty(t, acc.Metadata[handlers.MarkerKey("key-b")])
	require.Equal(t, "1", acc.Metadata[handlers.MetadataBalancePriority])
}

// boundClaimer is a Claimer bound once the worker is running (the claims
// bucket is provisioned by setup).
type boundClaimer struct{ c atomic.Pointer[Claims] }

func (b *boundClaimer) Claim(ctx context.Context, ledger, account, key string) error {
	return b.c.Load().Claim(ctx, ledger, account, key)
}

// TestDashTwinWalletsClaimTheirSharedBalance: wallets "a-b1" and "ab1" are two
// lines (their subjects differ) but one balance (an address has no dashes),
// so in the default order, each command the head of its own line, the claim is
// all that keeps both from writing it. Every read is held back and the second
// key's write too, so that both read "absent" and the second would overwrite
// the first. Without the claim each balance is written twice.
func TestDashTwinWalletsClaimTheirSharedBalance(t *testing.T) {
	t.Parallel()
	const n = 10
	claimer := &boundClaimer{}
	b := setup(t, withConfig(func(c *Config) { c.Concurrency = 8 }),
		withLedgerMiddleware(func(inner http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch {
				case r.Method == http.MethodGet:
					time.Sleep(50 * time.Millisecond)
				case strings.Contains(r.Header.Get("Idempotency-Key"), "twin-"):
					time.Sleep(200 * time.Millisecond)
				}
				inner.ServeHTTP(w, r)
			})
		}),
		withHandler(func(h handlers.CreateBalanceHandler) handlers.CreateBalanceHandler {
			cb := *h.(*handlers.CreateBalance)
			cb.Claim = claimer
			cb.ClaimDeferral = 20 * time.Millisecond
			return &cb
		}))
	require.Equal(t, OrderWallet, b.cfg.WithDefaults().Order)
	claims, err := NewClaims(context.Background(), b.js, b.cfg)
	require.NoError(t, err)
	claimer.c.Store(claims)

	for i := range n {
		dashed, plain := fmt.Sprintf("a-b%d", i), fmt.Sprintf("ab%d", i)
		b.publish(t, cmd(dashed, fmt.Sprintf("first-%d", i), body(dashed, "shared")))
		b.publish(t, cmd(plain, fmt.Sprintf("twin-%d", i), body(plain, "shared")))
	}
	b.settled(t)

	created, exists := 0, 0
	for _, ev := range b.events.all() {
		switch {
		case strings.HasPrefix(ev.Subject, "wallets.events.balance-created."):
			created++
		case strings.HasPrefix(ev.Subject, "wallets.events.balance-create-rejected."):
			require.Equal(t, string(messages.CodeAlreadyExists), ev.json(t)["code"], "%s", ev.Data)
			exists++
		}
	}
	logs, err := b.ledger.AllLogs(context.Background(), testLedger)
	require.NoError(t, err)
	writes := map[string]int{}
	for _, l := range logs {
		if md, err := l.SetMetadata(); err == nil {
			writes[md.TargetID]++
		}
	}
	require.Len(t, writes, n, "one account per pair of twins")
	for account, w := range writes {
		require.Equal(t, 1, w, "%s written by both twins", account)
	}
	require.Equal(t, n, created)
	require.Equal(t, n, exists)
}
