package handlers_test

import (
	"context"
	"encoding/json"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// observedWallet is the main account's metadata the wallets service
// (a0e80ed) wrote for POST /wallets with Idempotency-Key k-w1 and
// {"name": "alice", "metadata": {"z": "last", "b": "x\"y", "tier": "gold"}}
// (docs/wallets-writes.md, create-wallet).
const observedWallet = `{"wallets/balances":"true","wallets/balances/name":"main","wallets/createRequestHash":"ee66109f5d29578057c5b80e054633d025405a35cf0af5d329305f0aa826a4f0","wallets/createResponse":"{\"id\":\"40057e88-aa91-5a6c-b63d-3555adf9d5c7\",\"name\":\"alice\",\"metadata\":{\"b\":\"x\\\"y\",\"tier\":\"gold\",\"z\":\"last\"},\"createdAt\":\"2026-12-07T04:38:33.987193843Z\",\"ledger\":\"wallets-002\",\"balances\":{\"main\":{\"expiresAt\":null,\"priority\":0,\"assets\":{}}}}","wallets/createdAt":"2026-12-07T04:38:33.987193843Z","wallets/custom_data_b":"x\"y","wallets/custom_data_tier":"gold","wallets/custom_data_z":"last","wallets/id":"40057e88-aa91-5a6c-b63d-3555adf9d5c7","wallets/name":"alice","wallets/spec/type":"wallets.primary"}`

// recordingLedger keeps the metadata written.
type recordingLedger struct {
	handlers.Ledger
	written map[string]string
	key     string
}

func (r *recordingLedger) AddAccountMetadata(ctx context.Context, ledger, address string, md map[string]string, key string) (ledgeradapter.WriteResult, error) {
	r.written, r.key = md, key
	return r.Ledger.AddAccountMetadata(ctx, ledger, address, md, key)
}

func TestCreateWalletIsTheWalletsServices(t *testing.T) {
	t.Parallel()
	require.Equal(t, "40057e88-aa91-5a6c-b63d-3555adf9d5c7", messages.WalletIDOf("k-w1"))
	require.Equal(t, "72c654e8-3076-5ce7-9934-8bd18f9d2478", messages.WalletIDOf("p-w1"))
	require.Equal(t, "228b7527-276a-51bc-8c62-c8ecf02566cc", messages.HoldIDOf("k-h1"))
	require.Equal(t, "abe93d4b58e931f9f62a26f7fe999938686b2be20e22563027932c3ac78f846e",
		handlers.Fingerprint(messages.CreateWallet{Name: "a<b>&c\u2028", Metadata: map[string]string{"k<": "v&"}}))
	require.Equal(t, "3ab16e452658711751771927758a6e4d9818ea921fe21a12a2f8579f1b8b4f2c", handlers.Fingerprint(messages.CreateWallet{}))

	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	ctx := context.Background()
	require.NoError(t, l.Client.EnsureLedger(ctx, "wallets-002"))
	at, err := time.Parse(time.RFC3339Nano, "2026-12-07T04:38:33.987193843Z")
	require.NoError(t, err)
	rec := &recordingLedger{Ledger: l.Client}
	h := &handlers.CreateWallet{Ledger: rec, LedgerName: "wallets-002", Now: func() time.Time { return at }}
	cmd := messages.CreateWallet{WalletID: messages.WalletIDOf("k-w1"), Name: "alice", Metadata: map[string]string{"z": "last", "b": "x\"y", "tier": "gold"}}
	r, err := h.Handle(ctx, "k-w1", cmd)
	require.NoError(t, err)
	require.Empty(t, r.Code())
	var want map[string]string
	require.NoError(t, json.Unmarshal([]byte(observedWallet), &want))
	require.Equal(t, want, rec.written, "the main account's metadata, byte for byte")
}

func TestCreateWalletOutcomes(t *testing.T) {
	t.Parallel()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	ctx := context.Background()
	require.NoError(t, l.Client.EnsureLedger(ctx, "wallets-002"))
	h := &handlers.CreateWallet{Ledger: l.Client, LedgerName: "wallets-002"}
	cmd := func(key, name string) messages.CreateWallet {
		return messages.CreateWallet{WalletID: messages.WalletIDOf(key), Name: name}
	}

	r, err := h.Handle(ctx, "k1", cmd("k1", "alice"))
	require.NoError(t, err)
	_, wallet, body := r.Event()
	require.Equal(t, messages.WalletIDOf("k1"), wallet)
	first := body.(messages.WalletCreated)
	require.False(t, first.Replayed)

	r, err = h.Handle(ctx, "k1", cmd("k1", "alice"))
	require.NoError(t, err)
	_, _, body = r.Event()
	again := body.(messages.WalletCreated)
	require.True(t, again.Replayed)
	require.True(t, first.Wallet.CreatedAt.Equal(again.Wallet.CreatedAt), "the replay answers the stored wallet")

	r, err = h.Handle(ctx, "k1", cmd("k1", "bob"))
	require.NoError(t, err)
	require.Equal(t, messages.CodeKeyReused, r.Code())

	r, err = h.Handle(ctx, "k1", cmd("k2", "alice"))
	require.NoError(t, err)
	require.Equal(t, messages.CodeInvalidCommand, r.Code(), "a subject that is not the key's wallet")

	// An address that received funds before any wallet was made there.
	_, err = (&handlers.CreditWallet{Ledger: l.Client, LedgerName: "wallets-002"}).Handle(ctx, "c1",
		messages.CreditWallet{WalletID: messages.WalletIDOf("k3"), Amount: messages.Monetary{Asset: "USD", Amount: big.NewInt(1)}})
	require.NoError(t, err)
	r, err = h.Handle(ctx, "k3", cmd("k3", "carol"))
	require.NoError(t, err)
	require.Equal(t, messages.CodeConflict, r.Code())
}

// refusingLedger refuses every metadata write for good. With landed, the
// write lands first, as a racing attempt's would have; with readErr, every
// account read after the first (the one before the write) fails with it.
type refusingLedger struct {
	handlers.Ledger
	landed  bool
	readErr error
	reads   int
}

func (r *refusingLedger) AddAccountMetadata(ctx context.Context, ledger, address string, md map[string]string, key string) (ledgeradapter.WriteResult, error) {
	if r.landed {
		if _, err := r.Ledger.AddAccountMetadata(ctx, ledger, address, md, key); err != nil {
			return ledgeradapter.WriteResult{}, err
		}
	}
	return ledgeradapter.WriteResult{}, &ledgeradapter.Error{Op: "AddAccountMetadata", StatusCode: 400, ErrorCode: "VALIDATION"}
}

func (r *refusingLedger) GetAccount(ctx context.Context, ledger, address string) (ledgeradapter.Account, bool, error) {
	if r.reads++; r.readErr != nil && r.reads > 1 {
		return ledgeradapter.Account{}, false, r.readErr
	}
	return r.Ledger.GetAccount(ctx, ledger, address)
}

// A write refused for good is checked against the account: a wallet that
// another attempt made meanwhile replays, and when the account cannot be
// read the command is retried, not rejected (the refusal may be a racing
// attempt's creation time under the same key, its wallet made).
func TestCreateWalletRefusedWriteIsCheckedAgainstTheAccount(t *testing.T) {
	t.Parallel()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	ctx := context.Background()
	require.NoError(t, l.Client.EnsureLedger(ctx, "wallets-002"))
	handle := func(ledger handlers.Ledger, key string) (handlers.Result, error) {
		return (&handlers.CreateWallet{Ledger: ledger, LedgerName: "wallets-002"}).Handle(ctx, key,
			messages.CreateWallet{WalletID: messages.WalletIDOf(key), Name: "alice"})
	}

	r, err := handle(&refusingLedger{Ledger: l.Client, landed: true}, "k1")
	require.NoError(t, err)
	_, _, body := r.Event()
	require.True(t, body.(messages.WalletCreated).Replayed, "the wallet the racing attempt made")

	r, err = handle(&refusingLedger{Ledger: l.Client, readErr: &ledgeradapter.Error{Op: "GetAccount", StatusCode: 503}}, "k2")
	require.Nil(t, r, "no outcome while the account cannot be read")
	_, retry := handlers.AsRetry(err)
	require.True(t, retry, "retried: %v", err)

	// No wallet there: the refusal stands.
	r, err = handle(&refusingLedger{Ledger: l.Client}, "k3")
	require.NoError(t, err)
	require.Equal(t, messages.CodeLedgerRejected, r.Code())
}

// observedUpdate is the metadata the wallets service wrote for
// PATCH /wallets/40057e88-aa91-5a6c-b63d-3555adf9d5c7 with key k-p1 and
// {"metadata": {"tier": "platinum", "new": "n"}} on the wallet of
// observedWallet.
const observedUpdate = `{"wallets/balances":"true","wallets/balances/name":"main","wallets/createRequestHash":"ee66109f5d29578057c5b80e054633d025405a35cf0af5d329305f0aa826a4f0","wallets/createResponse":"{\"id\":\"40057e88-aa91-5a6c-b63d-3555adf9d5c7\",\"name\":\"alice\",\"metadata\":{\"b\":\"x\\\"y\",\"tier\":\"gold\",\"z\":\"last\"},\"createdAt\":\"2026-12-07T04:38:33.987193843Z\",\"ledger\":\"wallets-002\",\"balances\":{\"main\":{\"expiresAt\":null,\"priority\":0,\"assets\":{}}}}","wallets/createdAt":"2026-12-07T04:38:33.987193843Z","wallets/custom_data_b":"x\"y","wallets/custom_data_new":"n","wallets/custom_data_tier":"platinum","wallets/custom_data_z":"last","wallets/id":"40057e88-aa91-5a6c-b63d-3555adf9d5c7","wallets/name":"alice","wallets/spec/type":"wallets.primary"}`

// ledgerWithObservedWallet is an embedded ledger holding the wallet of
// observedWallet, as the wallets service created it.
func ledgerWithObservedWallet(t *testing.T) *testutil.Ledger {
	t.Helper()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	ctx := context.Background()
	require.NoError(t, l.Client.EnsureLedger(ctx, "wallets-002"))
	var created map[string]string
	require.NoError(t, json.Unmarshal([]byte(observedWallet), &created))
	_, err := l.Client.AddAccountMetadata(ctx, "wallets-002", "wallets:40057e88aa915a6cb63d3555adf9d5c7:main", created, "")
	require.NoError(t, err)
	return l
}

func TestUpdateWalletIsTheWalletsServices(t *testing.T) {
	t.Parallel()
	l := ledgerWithObservedWallet(t)
	ctx := context.Background()

	rec := &recordingLedger{Ledger: l.Client}
	h := &handlers.UpdateWallet{Ledger: rec, LedgerName: "wallets-002"}
	cmd := messages.UpdateWallet{WalletID: walletK1, Metadata: map[string]string{"tier": "platinum", "new": "n"}}
	r, err := h.Handle(ctx, "k-p1", cmd)
	require.NoError(t, err)
	require.Empty(t, r.Code())
	var want map[string]string
	require.NoError(t, json.Unmarshal([]byte(observedUpdate), &want))
	require.Equal(t, want, rec.written, "the whole metadata again, byte for byte")
	require.Equal(t, "k-p1", rec.key, "the client's key, as the wallets service sends it")

	r, err = h.Handle(ctx, "k-p1", cmd)
	require.NoError(t, err)
	require.True(t, r.Replayed())
	r, err = h.Handle(ctx, "k-p2", messages.UpdateWallet{WalletID: "nope"})
	require.NoError(t, err)
	require.Equal(t, messages.CodeWalletNotFound, r.Code())
}

// blockingLedger holds the writes to one address until released.
type blockingLedger struct {
	*ledgeradapter.Client
	address string
	release chan struct{}
}

func (l *blockingLedger) AddAccountMetadata(ctx context.Context, ledger, address string, md map[string]string, key string) (ledgeradapter.WriteResult, error) {
	if address == l.address {
		<-l.release
	}
	return l.Client.AddAccountMetadata(ctx, ledger, address, md, key)
}

// An update-wallet whose first answer was lost is replayed: the ledger's
// idempotency hit is all that says so. Through a Batcher its write is sent
// alone, even while other writes queue to share a bulk, whose answer would
// not carry the hit.
func TestUpdateWalletReplayThroughABatcher(t *testing.T) {
	t.Parallel()
	l := ledgerWithObservedWallet(t)
	ctx := context.Background()

	next := &blockingLedger{Client: l.Client, address: "block:1", release: make(chan struct{})}
	b, err := ledgeradapter.NewBatcher(next, ledgeradapter.BatcherConfig{Window: 2 * time.Second})
	require.NoError(t, err)
	h := &handlers.UpdateWallet{Ledger: b, LedgerName: "wallets-002"}
	cmd := messages.UpdateWallet{WalletID: walletK1, Metadata: map[string]string{"tier": "platinum"}}
	r, err := h.Handle(ctx, "k-u1", cmd)
	require.NoError(t, err)
	require.Empty(t, r.Code(), r.Reason())
	require.False(t, r.Replayed())

	// A write in flight: the next writes queue for a bulk.
	blocked := make(chan error, 1)
	go func() {
		_, err := b.AddAccountMetadata(ctx, "wallets-002", "block:1", map[string]string{"x": "1"}, "")
		blocked <- err
	}()
	require.Eventually(t, func() bool { return b.Stats().WriteRequests == 2 }, 5*time.Second, time.Millisecond)
	replay := make(chan handlers.Result, 1)
	go func() {
		r, err := h.Handle(ctx, "k-u1", cmd)
		if err != nil { // not on the test goroutine: no require here
			t.Errorf("replay: %v", err)
		}
		replay <- r
	}()
	other := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		_, err := b.AddAccountMetadata(ctx, "wallets-002", "other:1", map[string]string{"x": "1"}, "")
		other <- err
	}()
	r = <-replay
	close(next.release)
	require.NoError(t, <-blocked)
	require.NoError(t, <-other)
	require.NotNil(t, r)
	require.True(t, r.Replayed(), "the replay is the ledger's idempotency hit")
}
