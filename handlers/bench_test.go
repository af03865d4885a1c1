package handlers_test

import (
	"context"
	"maps"
	"net/http"
	"sync"
	"testing"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// fakeLedger is an in-process handlers.Ledger with the ledger's merge and
// Idempotency-Key semantics, minus HTTP and storage, so that a benchmark
// measures the handler alone. A key is bound to the address it first wrote,
// which stands in for the ledger's hash of the whole input.
type fakeLedger struct {
	mu       sync.Mutex
	accounts map[string]map[string]string
	keys     map[string]string
}

func fakeLedgerFor() *fakeLedger {
	return &fakeLedger{accounts: map[string]map[string]string{}, keys: map[string]string{}}
}

func (f *fakeLedger) GetAccount(_ context.Context, _, address string) (ledgeradapter.Account, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	md, ok := f.accounts[address]
	if !ok {
		return ledgeradapter.Account{}, false, nil
	}
	return ledgeradapter.Account{Address: address, Metadata: maps.Clone(md)}, true, nil
}

func (f *fakeLedger) AddAccountMetadata(_ context.Context, _, address string, md map[string]string, key string) (ledgeradapter.WriteResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if key != "" {
		if prev, ok := f.keys[key]; ok {
			if prev != address {
				return ledgeradapter.WriteResult{}, &ledgeradapter.Error{
					Op: "AddAccountMetadata", StatusCode: http.StatusBadRequest, ErrorCode: ledgeradapter.CodeValidation,
					ErrorMessage: "invalid idempotency hash when using idempotency key '" + key + "'",
				}
			}
			return ledgeradapter.WriteResult{IdempotencyHit: true}, nil
		}
		f.keys[key] = address
	}
	acc := f.accounts[address]
	if acc == nil {
		acc = make(map[string]string, len(md))
		f.accounts[address] = acc
	}
	maps.Copy(acc, md)
	return ledgeradapter.WriteResult{}, nil
}

func (f *fakeLedger) forget(address, key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.accounts, address)
	delete(f.keys, key)
}

// BenchmarkHandle measures one decision and its ledger calls for each path
// a command can take, without the ledger's own cost.
func BenchmarkHandle(b *testing.B) {
	cmd := savings()
	address := handlers.AccountAddress("", cmd.WalletID, cmd.Name)
	ledgerKey := handlers.LedgerIdempotencyKey("k1")

	newHandler := func(b *testing.B) (*handlers.CreateBalance, *fakeLedger) {
		b.Helper()
		f := fakeLedgerFor()
		h := &handlers.CreateBalance{Ledger: f, LedgerName: testLedger}
		if err := h.Validate(); err != nil {
			b.Fatal(err)
		}
		return h, f
	}
	mustCode := func(b *testing.B, o handlers.Outcome, err error, want messages.Code) {
		if err != nil || o.Code() != want {
			b.Fatalf("got %+v, %v; want code %q", o, err, want)
		}
	}

	b.Run("create", func(b *testing.B) {
		h, f := newHandler(b)
		ctx := b.Context()
		b.ReportAllocs()
		for b.Loop() {
			o, err := h.Handle(ctx, "k1", cmd)
			mustCode(b, o, err, "")
			f.forget(address, ledgerKey)
		}
	})

	b.Run("replay", func(b *testing.B) {
		h, _ := newHandler(b)
		ctx := b.Context()
		o, err := h.Handle(ctx, "k1", cmd)
		mustCode(b, o, err, "")
		b.ReportAllocs()
		for b.Loop() {
			o, err := h.Handle(ctx, "k1", cmd)
			mustCode(b, o, err, "")
		}
	})

	b.Run("already-exists", func(b *testing.B) {
		h, _ := newHandler(b)
		ctx := b.Context()
		o, err := h.Handle(ctx, "k1", cmd)
		mustCode(b, o, err, "")
		b.ReportAllocs()
		for b.Loop() {
			o, err := h.Handle(ctx, "k2", cmd)
			mustCode(b, o, err, messages.CodeAlreadyExists)
		}
	})

	b.Run("invalid", func(b *testing.B) {
		h, _ := newHandler(b)
		ctx := b.Context()
		bad := messages.CreateBalance{WalletID: "-", Name: "n"}
		b.ReportAllocs()
		for b.Loop() {
			o, err := h.Handle(ctx, "k1", bad)
			mustCode(b, o, err, messages.CodeInvalidCommand)
		}
	})
}

// TestFakeLedgerMatchesHandler runs the handler's main paths on the fake, so
// that the benchmark's numbers are those of the paths it names.
func TestFakeLedgerMatchesHandler(t *testing.T) {
	t.Parallel()

	f := fakeLedgerFor()
	h := &handlers.CreateBalance{Ledger: f, LedgerName: testLedger}
	ctx := t.Context()

	o, err := h.Handle(ctx, "k1", savings())
	requireNoErr(t, err)
	requireCreated(t, o, "k1", savings(), false)

	o, err = h.Handle(ctx, "k1", savings())
	requireNoErr(t, err)
	requireCreated(t, o, "k1", savings(), true)

	o, err = h.Handle(ctx, "k2", savings())
	requireNoErr(t, err)
	requireRejected(t, o, "k2", savings(), messages.CodeAlreadyExists)

	other := messages.CreateBalance{WalletID: "w1", Name: "other"}
	o, err = h.Handle(ctx, "k1", other)
	requireNoErr(t, err)
	requireRejected(t, o, "k1", other, messages.CodeKeyReused)
}

func requireNoErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
