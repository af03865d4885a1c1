package handlers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
	"github.com/wallets-worker/wallets-worker/messages"
)

const testLedger = "wallets-002"

// fault, when installed in a bundle, sees every request before the embedded
// ledger does and may answer it instead (it then returns true).
type fault func(w http.ResponseWriter, r *http.Request) bool

// testBundle is an embedded ledger stored in a temporary directory, served
// over real HTTP, a client on it and a handler using that client.
type testBundle struct {
	ctx     context.Context
	dir     string
	ledger  *embeddedledger.Ledger
	server  *httptest.Server
	client  *ledgeradapter.Client
	handler *handlers.CreateBalance

	fault atomic.Pointer[fault]
	// accountRequests counts requests to /v2/{ledger}/accounts/...
	accountRequests atomic.Int64
}

func setup(t *testing.T) *testBundle {
	t.Helper()

	b := &testBundle{ctx: t.Context(), dir: t.TempDir()}
	b.start(t)
	t.Cleanup(b.stop)
	require.NoError(t, b.client.EnsureLedger(b.ctx, testLedger))
	b.handler = &handlers.CreateBalance{Ledger: b.client, LedgerName: testLedger}
	require.NoError(t, b.handler.Validate())
	return b
}

func (b *testBundle) start(t *testing.T) {
	t.Helper()

	l, err := embeddedledger.Open(b.dir)
	require.NoError(t, err)
	b.ledger = l
	h := l.Handler()
	b.server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/accounts/") {
			b.accountRequests.Add(1)
		}
		if f := b.fault.Load(); f != nil && (*f)(w, r) {
			return
		}
		h.ServeHTTP(w, r)
	}))
	b.client, err = ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: b.server.URL})
	require.NoError(t, err)
	if b.handler != nil {
		b.handler.Ledger = b.client
	}
}

func (b *testBundle) stop() {
	b.server.Close()
	b.client.CloseIdleConnections()
	_ = b.ledger.Close()
}

// restart stops the server and the ledger and opens the same directory again.
func (b *testBundle) restart(t *testing.T) {
	t.Helper()
	b.stop()
	b.start(t)
}

// setFault installs f; nil removes the fault.
func (b *testBundle) setFault(f fault) {
	if f == nil {
		b.fault.Store(nil)
		return
	}
	b.fault.Store(&f)
}

func (b *testBundle) handle(t *testing.T, key string, cmd messages.CreateBalance) handlers.Outcome {
	t.Helper()
	o, err := b.handler.Handle(b.ctx, key, cmd)
	require.NoError(t, err)
	return o
}

// metadata returns the metadata of an account that must exist.
func (b *testBundle) metadata(t *testing.T, address string) map[string]string {
	t.Helper()
	acc, found, err := b.client.GetAccount(b.ctx, testLedger, address)
	require.NoError(t, err)
	require.True(t, found, "account %s does not exist", address)
	return acc.Metadata
}

func (b *testBundle) requireNoAccount(t *testing.T, address string) {
	t.Helper()
	_, found, err := b.client.GetAccount(b.ctx, testLedger, address)
	require.NoError(t, err)
	require.False(t, found, "account %s exists", address)
}

// setMetadataLogs returns the ledger's SET_METADATA logs, newest first.
func (b *testBundle) setMetadataLogs(t *testing.T) []ledgeradapter.Log {
	t.Helper()
	all, err := b.client.AllLogs(b.ctx, testLedger)
	require.NoError(t, err)
	var logs []ledgeradapter.Log
	for _, l := range all {
		if l.Type == ledgeradapter.LogTypeSetMetadata {
			logs = append(logs, l)
		}
	}
	return logs
}

// write adds metadata to an account directly, as another writer would.
func (b *testBundle) write(t *testing.T, address string, md map[string]string, ledgerKey string) {
	t.Helper()
	_, err := b.client.AddAccountMetadata(b.ctx, testLedger, address, md, ledgerKey)
	require.NoError(t, err)
}

func expiry(s string) *time.Time {
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return &at
}

// savings is the command most tests start from.
func savings() messages.CreateBalance {
	return messages.CreateBalance{WalletID: "w1", Name: "savings", Priority: 2, ExpiresAt: expiry("2027-01-01T00:00:00Z")}
}

func requireCreated(t *testing.T, o handlers.Outcome, key string, cmd messages.CreateBalance, replayed bool) *messages.BalanceCreated {
	t.Helper()
	require.Nil(t, o.Rejected, "rejected: %+v", o.Rejected)
	require.NotNil(t, o.Created)
	require.Equal(t, messages.Code(""), o.Code())
	require.Equal(t, key, o.Created.Key)
	require.Equal(t, cmd.WalletID, o.Created.WalletID)
	require.Equal(t, testLedger, o.Created.Ledger)
	require.Equal(t, handlers.AccountAddress("", cmd.WalletID, cmd.Name), o.Created.Account)
	require.Equal(t, replayed, o.Created.Replayed, "replayed")
	return o.Created
}

func requireRejected(t *testing.T, o handlers.Outcome, key string, cmd messages.CreateBalance, code messages.Code) {
	t.Helper()
	require.Nil(t, o.Created, "created: %+v", o.Created)
	require.NotNil(t, o.Rejected)
	require.Equal(t, code, o.Rejected.Code, "message: %s", o.Rejected.Message)
	require.Equal(t, code, o.Code())
	require.Equal(t, key, o.Rejected.Key)
	require.Equal(t, cmd.WalletID, o.Rejected.WalletID)
	require.Equal(t, cmd.Name, o.Rejected.Name)
	require.NotEmpty(t, o.Rejected.Message)
}

func requireRetry(t *testing.T, o handlers.Outcome, err error, deferred bool) *handlers.RetryError {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, handlers.Outcome{}, o)
	re, ok := handlers.AsRetry(err)
	require.True(t, ok, "not a *RetryError: %v", err)
	require.Equal(t, deferred, re.Deferred, "deferred")
	return re
}

// answer returns a fault answering requests that match with a ledger error.
func answer(match func(r *http.Request) bool, status int, code, message string) fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if !match(r) {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"errorCode": code, "errorMessage": message})
		return true
	}
}

func isAccountRead(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/accounts/")
}

func isMetadataWrite(r *http.Request) bool {
	return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/metadata")
}

func TestCreateBalance_Validate(t *testing.T) {
	t.Parallel()

	require.NoError(t, (&handlers.CreateBalance{Ledger: fakeLedgerFor(), LedgerName: "l", AccountPrefix: "acme-eu:x"}).Validate())

	err := (&handlers.CreateBalance{LedgerName: "_info", AccountPrefix: "a::b"}).Validate()
	require.ErrorContains(t, err, "Ledger is required")
	require.ErrorIs(t, err, ledgeradapter.ErrInvalidLedgerName)
	require.ErrorIs(t, err, ledgeradapter.ErrInvalidAddress)

	err = (&handlers.CreateBalance{Ledger: fakeLedgerFor(), LedgerName: "l", AccountPrefix: "-"}).Validate()
	require.ErrorIs(t, err, ledgeradapter.ErrInvalidAddress, "a prefix of dashes only is empty once they are removed")
}

func TestHandle_FirstCreate(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name       string
		cmd        messages.CreateBalance
		wantExpiry string
		wantMarker string
	}{
		{
			name:       "with expiry",
			cmd:        savings(),
			wantExpiry: "2027-01-01T00:00:00Z",
			wantMarker: `{"name":"savings","expiresAt":"2027-01-01T00:00:00Z","priority":2,"walletID":"w1"}`,
		},
		{
			name:       "never expires",
			cmd:        messages.CreateBalance{WalletID: "w1", Name: "gift"},
			wantExpiry: "",
			wantMarker: `{"name":"gift","expiresAt":null,"priority":0,"walletID":"w1"}`,
		},
		{
			name:       "expiry in another zone, dashed wallet",
			cmd:        messages.CreateBalance{WalletID: "w-1", Name: "n", Priority: -1, ExpiresAt: expiry("2027-01-01T05:30:00.25+05:30")},
			wantExpiry: "2027-01-01T00:00:00.25Z",
			wantMarker: `{"name":"n","expiresAt":"2027-01-01T00:00:00.25Z","priority":-1,"walletID":"w-1"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)

			o := b.handle(t, "k1", tt.cmd)

			created := requireCreated(t, o, "k1", tt.cmd, false)
			require.True(t, created.Balance.Equal(tt.cmd.Balance()))
			address := created.Account

			md := b.metadata(t, address)
			require.Equal(t, map[string]string{
				"wallets/id":                 tt.cmd.WalletID,
				"wallets/balances":           "true",
				"wallets/balances/name":      tt.cmd.Name,
				"wallets/balances/expiresAt": tt.wantExpiry,
				"wallets/balances/priority":  fmt.Sprint(tt.cmd.Priority),
				handlers.MarkerKey("k1"):     tt.wantMarker,
			}, md)

			// The wallets service replays from the marker.
			var fields map[string]json.RawMessage
			require.NoError(t, json.Unmarshal([]byte(md[handlers.MarkerKey("k1")]), &fields))
			require.Contains(t, fields, "name")
			require.Contains(t, fields, "expiresAt")
			require.Contains(t, fields, "priority")
			var wb walletsBalance
			require.NoError(t, json.Unmarshal([]byte(md[handlers.MarkerKey("k1")]), &wb))
			require.Equal(t, tt.cmd.Name, wb.Name)
			require.Equal(t, int(tt.cmd.Priority), wb.Priority)
			require.Equal(t, tt.cmd.ExpiresAt == nil, wb.ExpiresAt == nil)
			if wb.ExpiresAt != nil {
				require.True(t, wb.ExpiresAt.Equal(*tt.cmd.ExpiresAt))
			}

			logs := b.setMetadataLogs(t)
			require.Len(t, logs, 1)
			require.Equal(t, handlers.LedgerIdempotencyKey("k1"), logs[0].IdempotencyKey)
			data, err := logs[0].SetMetadata()
			require.NoError(t, err)
			require.Equal(t, "ACCOUNT", data.TargetType)
			require.Equal(t, address, data.TargetID)
			require.Equal(t, handlers.BalanceMetadata("k1", tt.cmd), data.Metadata)
		})
	}

	t.Run("account prefix", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.handler.AccountPrefix = "acme-eu"

		o := b.handle(t, "k1", savings())

		require.NotNil(t, o.Created)
		require.Equal(t, "acmeeu:wallets:w1:savings", o.Created.Account)
		require.Equal(t, "true", b.metadata(t, "acmeeu:wallets:w1:savings")[handlers.MetadataBalances])
	})
}

func TestHandle_Replay(t *testing.T) {
	t.Parallel()

	t.Run("same key, same command", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.handle(t, "k1", savings())
		before := b.metadata(t, "wallets:w1:savings")

		for range 3 {
			o := b.handle(t, "k1", savings())
			created := requireCreated(t, o, "k1", savings(), true)
			require.True(t, created.Balance.Equal(savings().Balance()))
		}

		require.Len(t, b.setMetadataLogs(t), 1)
		require.Equal(t, before, b.metadata(t, "wallets:w1:savings"))
	})

	t.Run("same instant in another zone", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.handle(t, "k1", savings())

		cmd := savings()
		cmd.ExpiresAt = expiry("2026-12-31T19:00:00-05:00")
		o := b.handle(t, "k1", cmd)

		created := requireCreated(t, o, "k1", cmd, true)
		require.Equal(t, time.UTC, created.Balance.ExpiresAt.Location())
		require.Len(t, b.setMetadataLogs(t), 1)
	})

	t.Run("event carries the balance as first stored", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.handle(t, "k1", savings())
		// Another writer (a concurrent wallets create, say) overwrote the
		// shared balance keys; the marker still holds what k1 stored.
		b.write(t, "wallets:w1:savings", map[string]string{handlers.MetadataBalancePriority: "9"}, "")

		o := b.handle(t, "k1", savings())

		created := requireCreated(t, o, "k1", savings(), true)
		require.Equal(t, int64(2), created.Balance.Priority)
		require.Equal(t, "savings", created.Balance.Name)
	})

	t.Run("after the ledger restarts", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.handle(t, "k1", savings())

		b.restart(t)
		o := b.handle(t, "k1", savings())

		requireCreated(t, o, "k1", savings(), true)
		require.Len(t, b.setMetadataLogs(t), 1)
		require.Equal(t, handlers.BalanceMetadata("k1", savings()), b.metadata(t, "wallets:w1:savings"))
	})

	t.Run("read lost: the write is an idempotency hit", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.handle(t, "k1", savings())
		// The account looks absent (a lagging read replica, say), so the
		// handler writes again; the ledger answers from its log.
		b.setFault(answer(isAccountRead, http.StatusNotFound, "NOT_FOUND", "not found"))

		o := b.handle(t, "k1", savings())

		requireCreated(t, o, "k1", savings(), true)
		require.Len(t, b.setMetadataLogs(t), 1)
	})

	t.Run("answer lost after the write", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		var lost atomic.Bool
		b.setFault(func(w http.ResponseWriter, r *http.Request) bool {
			if !isMetadataWrite(r) || lost.Swap(true) {
				return false
			}
			b.ledger.Handler().ServeHTTP(httptest.NewRecorder(), r) // applied, answer dropped
			w.WriteHeader(http.StatusBadGateway)
			return true
		})

		o, err := b.handler.Handle(b.ctx, "k1", savings())
		requireRetry(t, o, err, false)

		o = b.handle(t, "k1", savings())
		requireCreated(t, o, "k1", savings(), true)
		require.Len(t, b.setMetadataLogs(t), 1)
	})
}

func TestHandle_KeyReused(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name          string
		first, second messages.CreateBalance
	}{
		{
			name:   "other priority",
			first:  savings(),
			second: func() messages.CreateBalance { c := savings(); c.Priority = 3; return c }(),
		},
		{
			name:  "other expiry",
			first: savings(),
			second: func() messages.CreateBalance {
				c := savings()
				c.ExpiresAt = expiry("2027-01-01T00:00:00.000001Z") // a microsecond: expiries are stored to the microsecond
				return c
			}(),
		},
		{
			name:   "expiry dropped",
			first:  savings(),
			second: func() messages.CreateBalance { c := savings(); c.ExpiresAt = nil; return c }(),
		},
		{
			name:   "expiry added",
			first:  messages.CreateBalance{WalletID: "w1", Name: "savings"},
			second: messages.CreateBalance{WalletID: "w1", Name: "savings", ExpiresAt: expiry("2027-01-01T00:00:00Z")},
		},
		{
			name:   "alias wallet on the same account",
			first:  messages.CreateBalance{WalletID: "a-b", Name: "n"},
			second: messages.CreateBalance{WalletID: "ab", Name: "n"},
		},
		{
			name:   "alias name on the same account",
			first:  messages.CreateBalance{WalletID: "w1", Name: "sav-ings"},
			second: messages.CreateBalance{WalletID: "w1", Name: "savings"},
		},
		{
			name:   "another balance: the ledger refuses the key",
			first:  savings(),
			second: messages.CreateBalance{WalletID: "w1", Name: "other"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.handle(t, "k1", tt.first)
			firstAddress := handlers.AccountAddress("", tt.first.WalletID, tt.first.Name)
			before := b.metadata(t, firstAddress)

			o := b.handle(t, "k1", tt.second)

			requireRejected(t, o, "k1", tt.second, messages.CodeKeyReused)
			require.Len(t, b.setMetadataLogs(t), 1)
			require.Equal(t, before, b.metadata(t, firstAddress))
			if secondAddress := handlers.AccountAddress("", tt.second.WalletID, tt.second.Name); secondAddress != firstAddress {
				b.requireNoAccount(t, secondAddress)
			}
		})
	}

	t.Run("ledger key used by another write", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.write(t, "elsewhere", map[string]string{"x": "y"}, handlers.LedgerIdempotencyKey("k1"))

		o := b.handle(t, "k1", savings())

		requireRejected(t, o, "k1", savings(), messages.CodeKeyReused)
		b.requireNoAccount(t, "wallets:w1:savings")
		require.Len(t, b.setMetadataLogs(t), 1)
	})
}

func TestHandle_AlreadyExists(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name   string
		second messages.CreateBalance
	}{
		{"same command", savings()},
		{"other fields", messages.CreateBalance{WalletID: "w1", Name: "savings", Priority: 7}},
		{"alias wallet", messages.CreateBalance{WalletID: "w-1", Name: "savings", Priority: 2, ExpiresAt: savings().ExpiresAt}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.handle(t, "k1", savings())
			before := b.metadata(t, "wallets:w1:savings")

			o := b.handle(t, "k2", tt.second)

			requireRejected(t, o, "k2", tt.second, messages.CodeAlreadyExists)
			require.Len(t, b.setMetadataLogs(t), 1)
			require.Equal(t, before, b.metadata(t, "wallets:w1:savings"))
		})
	}
}

func TestHandle_AdoptsAccountThatIsNotABalance(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name     string
		existing map[string]string
	}{
		{"unrelated metadata", map[string]string{"note": "received funds"}},
		{"balance flag not true", map[string]string{handlers.MetadataBalances: "false", handlers.MetadataBalancePriority: "5"}},
		{"no metadata", map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.write(t, "wallets:w1:savings", tt.existing, "")

			o := b.handle(t, "k1", savings())

			requireCreated(t, o, "k1", savings(), false)
			want := handlers.BalanceMetadata("k1", savings())
			for k, v := range tt.existing {
				if _, ours := want[k]; !ours {
					want[k] = v
				}
			}
			require.Equal(t, want, b.metadata(t, "wallets:w1:savings"))
			require.Len(t, b.setMetadataLogs(t), 2)

			o = b.handle(t, "k1", savings())
			requireCreated(t, o, "k1", savings(), true)
		})
	}
}

// writeWalletsBalance creates a balance the way the wallets service does
// over HTTP with idempotency key key: its keys, its marker, and key itself as
// the ledger's Idempotency-Key.
func writeWalletsBalance(t *testing.T, b *testBundle, walletID, name, expiresAt, priority, key, marker string) {
	t.Helper()
	b.write(t, handlers.AccountAddress("", walletID, name), map[string]string{
		"wallets/id":                 walletID,
		"wallets/balances":           "true",
		"wallets/balances/name":      name,
		"wallets/balances/expiresAt": expiresAt,
		"wallets/balances/priority":  priority,
		handlers.MarkerKey(key):      marker,
	}, key)
}

func TestHandle_WalletsServiceMarker(t *testing.T) {
	t.Parallel()

	gift := messages.CreateBalance{WalletID: "w1", Name: "gift"}
	giftExpiring := messages.CreateBalance{WalletID: "w1", Name: "gift", Priority: 3, ExpiresAt: expiry("2027-01-01T00:00:00Z")}

	t.Run("same fields replay", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		writeWalletsBalance(t, b, "w1", "gift", "", "0", "K", `{"name":"gift","expiresAt":null,"priority":0}`)

		o := b.handle(t, "K", gift)

		created := requireCreated(t, o, "K", gift, true)
		require.Equal(t, messages.Balance{Name: "gift"}, created.Balance)
		require.Len(t, b.setMetadataLogs(t), 1)
	})

	t.Run("same fields with expiry replay", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		writeWalletsBalance(t, b, "w1", "gift", "2027-01-01T00:00:00Z", "3", "K",
			`{"name":"gift","expiresAt":"2027-01-01T00:00:00Z","priority":3}`)

		o := b.handle(t, "K", giftExpiring)

		created := requireCreated(t, o, "K", giftExpiring, true)
		require.True(t, created.Balance.Equal(giftExpiring.Balance()))
		require.Len(t, b.setMetadataLogs(t), 1)
	})

	t.Run("different fields are KEY_REUSED", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		writeWalletsBalance(t, b, "w1", "gift", "", "0", "K", `{"name":"gift","expiresAt":null,"priority":0}`)

		o := b.handle(t, "K", messages.CreateBalance{WalletID: "w1", Name: "gift", Priority: 1})

		requireRejected(t, o, "K", messages.CreateBalance{WalletID: "w1", Name: "gift", Priority: 1}, messages.CodeKeyReused)
		require.Len(t, b.setMetadataLogs(t), 1)
	})

	t.Run("another key is ALREADY_EXISTS", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		writeWalletsBalance(t, b, "w1", "gift", "", "0", "K", `{"name":"gift","expiresAt":null,"priority":0}`)

		o := b.handle(t, "K2", gift)

		requireRejected(t, o, "K2", gift, messages.CodeAlreadyExists)
		require.Len(t, b.setMetadataLogs(t), 1)
	})
}

func TestHandle_ConcurrentSameCommand(t *testing.T) {
	t.Parallel()
	b := setup(t)

	const n = 10
	outcomes := make([]handlers.Outcome, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			for {
				outcomes[i], errs[i] = b.handler.Handle(b.ctx, "k1", savings())
				// An attempt that raced the first write of the account lost
				// with a 500, as on the real ledger (CONTRACT §3): the worker
				// redelivers it.
				var le *ledgeradapter.Error
				if _, retry := handlers.AsRetry(errs[i]); !retry || !errors.As(errs[i], &le) || le.StatusCode != http.StatusInternalServerError {
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()

	firsts := 0
	for i := range n {
		require.NoError(t, errs[i])
		require.NotNil(t, outcomes[i].Created, "attempt %d: %+v", i, outcomes[i].Rejected)
		replayed := outcomes[i].Created.Replayed
		created := requireCreated(t, outcomes[i], "k1", savings(), replayed)
		require.True(t, created.Balance.Equal(savings().Balance()))
		if !replayed {
			firsts++
		}
	}
	require.Equal(t, 1, firsts, "exactly one attempt applied the write")
	require.Len(t, b.setMetadataLogs(t), 1)
	require.Equal(t, handlers.BalanceMetadata("k1", savings()), b.metadata(t, "wallets:w1:savings"))
}

func TestHandle_InvalidCommandNeverReachesLedger(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		key  string
		cmd  messages.CreateBalance
	}{
		{"wallet of dashes only", "k1", messages.CreateBalance{WalletID: "-", Name: "n"}},
		{"wallet of two dashes", "k1", messages.CreateBalance{WalletID: "--", Name: "n"}},
		{"name of dashes only", "k1", messages.CreateBalance{WalletID: "w1", Name: "-"}},
		{"reserved name", "k1", messages.CreateBalance{WalletID: "w1", Name: "main"}},
		{"name with colon", "k1", messages.CreateBalance{WalletID: "w1", Name: "a:b"}},
		{"empty wallet", "k1", messages.CreateBalance{Name: "n"}},
		{"empty key", "", savings()},
		{"key with newline", "k\n1", savings()},
		{"key too long", strings.Repeat("k", messages.MaxKeyBytes+1), savings()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)

			o := b.handle(t, tt.key, tt.cmd)

			requireRejected(t, o, tt.key, tt.cmd, messages.CodeInvalidCommand)
			require.Zero(t, b.accountRequests.Load(), "the ledger was asked about an account")
			require.Empty(t, b.setMetadataLogs(t))
		})
	}
}

func TestHandle_LedgerFailures(t *testing.T) {
	t.Parallel()

	t.Run("500 on read is retried", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.setFault(answer(isAccountRead, http.StatusInternalServerError, "INTERNAL", "Internal error."))

		o, err := b.handler.Handle(b.ctx, "k1", savings())

		re := requireRetry(t, o, err, false)
		require.Zero(t, re.Delay)
		var le *ledgeradapter.Error
		require.ErrorAs(t, err, &le)
		require.Equal(t, http.StatusInternalServerError, le.StatusCode)
		require.Empty(t, b.setMetadataLogs(t))
	})

	for _, status := range []int{http.StatusInternalServerError, http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(fmt.Sprintf("%d on write is retried, then succeeds", status), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.setFault(answer(isMetadataWrite, status, "INTERNAL", "Internal error."))

			o, err := b.handler.Handle(b.ctx, "k1", savings())

			requireRetry(t, o, err, false)
			b.requireNoAccount(t, "wallets:w1:savings")

			b.setFault(nil)
			o = b.handle(t, "k1", savings())
			requireCreated(t, o, "k1", savings(), false)
			require.Len(t, b.setMetadataLogs(t), 1)
		})
	}

	t.Run("connection dropped is retried", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.setFault(func(w http.ResponseWriter, r *http.Request) bool {
			if !isMetadataWrite(r) {
				return false
			}
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				_ = conn.Close()
			}
			return true
		})

		o, err := b.handler.Handle(b.ctx, "k1", savings())

		requireRetry(t, o, err, false)
		require.Empty(t, b.setMetadataLogs(t))
	})

	t.Run("400 VALIDATION on write is LEDGER_REJECTED", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.setFault(answer(isMetadataWrite, http.StatusBadRequest, "VALIDATION", "metadata value too long"))

		o := b.handle(t, "k1", savings())

		requireRejected(t, o, "k1", savings(), messages.CodeLedgerRejected)
		require.Contains(t, o.Rejected.Message, "metadata value too long")
		require.Empty(t, b.setMetadataLogs(t))
	})

	t.Run("400 on read is LEDGER_REJECTED", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.setFault(answer(isAccountRead, http.StatusBadRequest, "VALIDATION", "invalid address"))

		o := b.handle(t, "k1", savings())

		requireRejected(t, o, "k1", savings(), messages.CodeLedgerRejected)
		require.Empty(t, b.setMetadataLogs(t))
	})

	// A ledger that is not usable yet is an operational state, not the
	// command's fault: the command waits within its retry budget.
	for _, tc := range []struct {
		status int
		code   string
	}{
		{http.StatusBadRequest, "OUTDATED_SCHEMA"},
		{http.StatusNotFound, "LEDGER_NOT_FOUND"},
	} {
		t.Run(tc.code+" is retried, not dead-lettered", func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.setFault(answer(isAccountRead, tc.status, tc.code, "ledger not usable"))

			_, err := b.handler.Handle(b.ctx, "k1", savings())

			r, ok := handlers.AsRetry(err)
			require.True(t, ok, "want a *RetryError, got %v", err)
			require.False(t, r.Deferred)
			require.Empty(t, b.setMetadataLogs(t))
		})
	}

	t.Run("marker that is not JSON is LEDGER_REJECTED", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.write(t, "wallets:w1:savings", map[string]string{handlers.MarkerKey("k1"): "{"}, "")

		o := b.handle(t, "k1", savings())

		requireRejected(t, o, "k1", savings(), messages.CodeLedgerRejected)
		require.Len(t, b.setMetadataLogs(t), 1)
	})

	t.Run("context cancelled is retried", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		ctx, cancel := context.WithCancel(b.ctx)
		cancel()

		o, err := b.handler.Handle(ctx, "k1", savings())

		requireRetry(t, o, err, false)
		require.ErrorIs(t, err, context.Canceled)
	})
}

// fakeClaimer records its calls and answers with err.
type fakeClaimer struct {
	err   error
	mu    sync.Mutex
	calls [][3]string
}

func (c *fakeClaimer) Claim(_ context.Context, ledger, account, key string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, [3]string{ledger, account, key})
	return c.err
}

func (c *fakeClaimer) callCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.calls)
}

func TestHandle_Claimer(t *testing.T) {
	t.Parallel()

	t.Run("claimed by another command is deferred", func(t *testing.T) {
		t.Parallel()
		for _, tt := range []struct {
			deferral, want time.Duration
		}{{0, handlers.DefaultClaimDeferral}, {3 * time.Second, 3 * time.Second}} {
			b := setup(t)
			b.handler.Claim = &fakeClaimer{err: fmt.Errorf("held by k0: %w", handlers.ErrClaimed)}
			b.handler.ClaimDeferral = tt.deferral

			o, err := b.handler.Handle(b.ctx, "k1", savings())

			re := requireRetry(t, o, err, true)
			require.Equal(t, tt.want, re.Delay)
			require.Positive(t, re.Delay)
			require.ErrorIs(t, err, handlers.ErrClaimed)
			require.True(t, strings.HasPrefix(err.Error(), "deferred: "), err.Error())
			b.requireNoAccount(t, "wallets:w1:savings")
			require.Empty(t, b.setMetadataLogs(t))
		}
	})

	t.Run("claim check failing is retried, not deferred", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		claimErr := errors.New("kv unavailable")
		b.handler.Claim = &fakeClaimer{err: claimErr}

		o, err := b.handler.Handle(b.ctx, "k1", savings())

		re := requireRetry(t, o, err, false)
		require.Zero(t, re.Delay)
		require.ErrorIs(t, err, claimErr)
		require.NotErrorIs(t, err, handlers.ErrClaimed)
		b.requireNoAccount(t, "wallets:w1:savings")
	})

	t.Run("consulted before a write only", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		claimer := &fakeClaimer{}
		b.handler.Claim = claimer

		requireCreated(t, b.handle(t, "k1", savings()), "k1", savings(), false)
		require.Equal(t, [][3]string{{testLedger, "wallets:w1:savings", "k1"}}, claimer.calls)

		requireCreated(t, b.handle(t, "k1", savings()), "k1", savings(), true)
		requireRejected(t, b.handle(t, "k1", messages.CreateBalance{WalletID: "w1", Name: "savings"}), "k1",
			messages.CreateBalance{WalletID: "w1", Name: "savings"}, messages.CodeKeyReused)
		requireRejected(t, b.handle(t, "k2", savings()), "k2", savings(), messages.CodeAlreadyExists)
		requireRejected(t, b.handle(t, "k3", messages.CreateBalance{WalletID: "-", Name: "n"}), "k3",
			messages.CreateBalance{WalletID: "-", Name: "n"}, messages.CodeInvalidCommand)
		require.Equal(t, 1, claimer.callCount())
	})

	t.Run("consulted before adopting an account", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		claimer := &fakeClaimer{}
		b.handler.Claim = claimer
		b.write(t, "wallets:w1:savings", map[string]string{"note": "x"}, "")

		requireCreated(t, b.handle(t, "k1", savings()), "k1", savings(), false)
		require.Equal(t, 1, claimer.callCount())
	})
}

func TestOutcomeAndRetryError(t *testing.T) {
	t.Parallel()

	cmd := savings()
	o := handlers.Reject("k1", cmd, messages.CodeKeyReused, "why")
	require.Equal(t, messages.CodeKeyReused, o.Code())
	require.Equal(t, &messages.BalanceCreateRejected{Key: "k1", WalletID: "w1", Name: "savings", Code: messages.CodeKeyReused, Message: "why"}, o.Rejected)
	require.Equal(t, messages.Code(""), handlers.Outcome{}.Code())

	cause := io.ErrUnexpectedEOF
	wrapped := fmt.Errorf("attempt 2: %w", &handlers.RetryError{Err: cause, Delay: time.Second})
	re, ok := handlers.AsRetry(wrapped)
	require.True(t, ok)
	require.Equal(t, time.Second, re.Delay)
	require.ErrorIs(t, wrapped, io.ErrUnexpectedEOF)
	require.Equal(t, "retryable: unexpected EOF", re.Error())
	require.Equal(t, "deferred: unexpected EOF", (&handlers.RetryError{Err: cause, Deferred: true}).Error())

	_, ok = handlers.AsRetry(cause)
	require.False(t, ok)
}

// notSentLedger refuses every call as the Batcher refuses one whose deadline
// is too near.
type notSentLedger struct{}

func (notSentLedger) GetAccount(context.Context, string, string) (ledgeradapter.Account, bool, error) {
	return ledgeradapter.Account{}, false, &ledgeradapter.Error{Op: "GetAccount", Err: ledgeradapter.ErrNoTimeLeft}
}

func (notSentLedger) AddAccountMetadata(context.Context, string, string, map[string]string, string) (ledgeradapter.WriteResult, error) {
	return ledgeradapter.WriteResult{}, &ledgeradapter.Error{Op: "AddAccountMetadata", Err: ledgeradapter.ErrNoTimeLeft}
}

func TestCallNotSentIsNoAttempt(t *testing.T) {
	t.Parallel()
	h := &handlers.CreateBalance{Ledger: notSentLedger{}, LedgerName: "l"}
	_, err := h.Handle(context.Background(), "k", messages.CreateBalance{WalletID: "w1", Name: "savings"})
	retry, ok := handlers.AsRetry(err)
	require.True(t, ok, "%v", err)
	require.True(t, retry.NoTimeLeft)
	require.False(t, retry.Deferred)
	require.ErrorIs(t, err, ledgeradapter.ErrNoTimeLeft)
}
