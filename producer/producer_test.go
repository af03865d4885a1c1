package producer_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/producer"
)

// setup starts the in-process stack of the examples for one test.
func setup(t *testing.T, withWorker bool) *stack {
	t.Helper()
	return startStack(t, withWorker)
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func commandsState(t *testing.T, js jetstream.JetStream) jetstream.StreamState {
	t.Helper()
	s, err := js.Stream(context.Background(), messages.StreamCommands)
	require.NoError(t, err)
	return s.CachedInfo().State
}

func TestPublishRefusesInvalidCommandsBeforeTheWire(t *testing.T) {
	t.Parallel()
	s := setup(t, false)
	ctx := testContext(t)
	p := producer.New(s.js)

	expires := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	valid := messages.CreateBalance{WalletID: "w1", Name: "savings"}
	tests := []struct {
		name  string
		cmd   messages.CreateBalance
		key   string
		field string
	}{
		{"reserved name", messages.CreateBalance{WalletID: "w1", Name: "main"}, "k", messages.FieldName},
		{"no name", messages.CreateBalance{WalletID: "w1"}, "k", messages.FieldName},
		{"no wallet", messages.CreateBalance{Name: "x"}, "k", messages.FieldWalletID},
		{"dot in wallet", messages.CreateBalance{WalletID: "w.1", Name: "x"}, "k", messages.FieldWalletID},
		{"wildcard wallet", messages.CreateBalance{WalletID: ">", Name: "x"}, "k", messages.FieldWalletID},
		{"colon in name", messages.CreateBalance{WalletID: "w1", Name: "a:b"}, "k", messages.FieldName},
		{"expiry past year 9999", messages.CreateBalance{WalletID: "w1", Name: "x", ExpiresAt: &expires}, "k", messages.FieldExpiresAt},
		{"walletID over 128 bytes", messages.CreateBalance{WalletID: strings.Repeat("w", messages.MaxTokenBytes+1), Name: "x"}, "k", messages.FieldWalletID},
		{"name over 128 bytes", messages.CreateBalance{WalletID: "w1", Name: strings.Repeat("n", messages.MaxTokenBytes+1)}, "k", messages.FieldName},
		{"empty key", valid, "", messages.FieldKey},
		{"key over 200 bytes", valid, strings.Repeat("k", messages.MaxKeyBytes+1), messages.FieldKey},
		{"key with a newline", valid, "k\n1", messages.FieldKey},
		{"key with non-ASCII", valid, "clé", messages.FieldKey},
		// NATS trims header values: " k" would be stored as "k", " " as no key.
		{"key with a leading space", valid, " k", messages.FieldKey},
		{"key with a trailing space", valid, "k ", messages.FieldKey},
		{"key of a space", valid, " ", messages.FieldKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ve *messages.ValidationError
			_, err := p.Publish(ctx, tt.cmd, tt.key)
			require.ErrorAs(t, err, &ve)
			require.Equal(t, tt.field, ve.Field, "%v", err)
			require.ErrorAs(t, producer.Validate(tt.cmd, tt.key), &ve)
		})
	}
	require.Zero(t, commandsState(t, s.js).LastSeq, "a refused command reached the stream")

	// The longest valid key, and a valid command, do reach it.
	ack, err := p.Publish(ctx, valid, strings.Repeat("k", messages.MaxKeyBytes))
	require.NoError(t, err)
	require.Equal(t, producer.Ack{Key: strings.Repeat("k", messages.MaxKeyBytes), Stream: messages.StreamCommands, Seq: 1, Command: valid}, ack)
	require.Equal(t, uint64(1), commandsState(t, s.js).LastSeq)
}

func TestPublishSetsTheKeyAndExpectsTheCommandsStream(t *testing.T) {
	t.Parallel()
	s := setup(t, false)
	ctx := testContext(t)
	p := producer.New(s.js)

	ack, err := p.Publish(ctx, messages.CreateBalance{WalletID: "w1", Name: "gift", Priority: 3}, "key-1")
	require.NoError(t, err)
	str, err := s.js.Stream(ctx, messages.StreamCommands)
	require.NoError(t, err)
	m, err := str.GetMsg(ctx, ack.Seq)
	require.NoError(t, err)
	require.Equal(t, "key-1", m.Header.Get(messages.HeaderMsgID))
	require.Equal(t, messages.CreateBalanceSubject("w1"), m.Subject)
	got, err := messages.DecodeCreateBalance(m.Subject, m.Data)
	require.NoError(t, err)
	require.Equal(t, messages.CreateBalance{WalletID: "w1", Name: "gift", Priority: 3}, got)

	// A stream other than WALLETS_COMMANDS on the subject is refused.
	require.NoError(t, s.js.DeleteStream(ctx, messages.StreamCommands))
	_, err = s.js.CreateStream(ctx, jetstream.StreamConfig{Name: "IMPOSTOR", Subjects: []string{messages.SubjectCommands}})
	require.NoError(t, err)
	_, err = p.Publish(ctx, messages.CreateBalance{WalletID: "w1", Name: "gift"}, "key-2")
	require.Error(t, err)
	var apiErr *jetstream.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, jetstream.ErrorCode(10060), apiErr.ErrorCode, "expected stream does not match: %v", err)
}

func TestDuplicatePublishReturnsTheOriginalSequenceAndOutcome(t *testing.T) {
	t.Parallel()
	s := setup(t, true)
	ctx := testContext(t)
	p := producer.New(s.js)
	cmd := messages.CreateBalance{WalletID: "w1", Name: "savings", Priority: 2}
	key := producer.KeyFrom("test", t.Name())

	first, err := p.Publish(ctx, cmd, key)
	require.NoError(t, err)
	require.False(t, first.Duplicate)
	want, err := p.Await(ctx, cmd.WalletID, first.Seq)
	require.NoError(t, err)
	require.NotNil(t, want.Created)
	require.Nil(t, want.Rejected)
	require.Equal(t, key, want.Created.Key)
	require.False(t, want.Created.Replayed)
	require.Equal(t, first.Seq, want.CommandSeq)
	require.Equal(t, messages.BalanceCreatedSubject("w1"), want.Subject)

	// The outcome was published before this publish and before these waits.
	again, err := p.Publish(ctx, cmd, key)
	require.NoError(t, err)
	require.True(t, again.Duplicate)
	require.Equal(t, first.Seq, again.Seq)

	got, err := p.Await(ctx, cmd.WalletID, again.Seq)
	require.NoError(t, err)
	require.Equal(t, want, got)

	got, err = p.AwaitKey(ctx, cmd.WalletID, key)
	require.NoError(t, err)
	require.Equal(t, want, got)

	a, err := producer.NewAwaiter(ctx, s.js)
	require.NoError(t, err)
	t.Cleanup(a.Stop)
	got, err = a.Await(ctx, again.Seq)
	require.NoError(t, err)
	require.Equal(t, want, got)

	// An Awaiter that looks back nowhere only sees what comes next.
	blind, err := producer.NewAwaiter(ctx, s.js, producer.WithLookback(0))
	require.NoError(t, err)
	t.Cleanup(blind.Stop)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = blind.Await(short, again.Seq)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestAwaitTimesOutWithTheCause(t *testing.T) {
	t.Parallel()
	s := setup(t, false) // no worker: no outcome will come
	ctx := testContext(t)
	p := producer.New(s.js)
	ack, err := p.Publish(ctx, messages.CreateBalance{WalletID: "w1", Name: "x"}, producer.NewKey())
	require.NoError(t, err)

	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = p.Await(short, "w1", ack.Seq)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	a, err := producer.NewAwaiter(ctx, s.js)
	require.NoError(t, err)
	outs, err := a.AwaitMany(short, []uint64{ack.Seq, ack.Seq + 1})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, "2 of 2 outcomes not received")
	require.Len(t, outs, 2)

	stopped := make(chan error, 1)
	go func() { _, err := a.Await(ctx, ack.Seq); stopped <- err }()
	a.Stop()
	require.ErrorIs(t, <-stopped, producer.ErrAwaiterStopped)
}

// TestAwaitManyThousandOutcomesOnOneSubscription publishes 1,000 commands
// while no worker runs, awaits them all at once, and checks that the wait
// holds one subscription on its connection and one consumer on the events
// stream; then a worker settles them.
func TestAwaitManyThousandOutcomesOnOneSubscription(t *testing.T) {
	t.Parallel()
	s := setup(t, false)
	ctx := testContext(t)
	const n = 1000

	p := producer.New(s.js)
	seqs := make([]uint64, n)
	for i := range n {
		// Every tenth command asks for the balance of the one before it
		// under another key: of the two, one creates it, the other is
		// rejected with ALREADY_EXISTS.
		cmd := messages.CreateBalance{WalletID: fmt.Sprintf("w%d", i), Name: "gift"}
		if i%10 == 9 {
			cmd.WalletID = fmt.Sprintf("w%d", i-1)
		}
		ack, err := p.Publish(ctx, cmd, producer.KeyFrom("thousand", fmt.Sprint(i)))
		require.NoError(t, err)
		seqs[i] = ack.Seq
	}

	// The awaiter has a connection of its own, so that its subscriptions
	// can be counted; the JetStream API's reply subscription is made first.
	nc, js := testutil.Connect(t, s.url)
	events, err := js.Stream(ctx, messages.StreamEvents)
	require.NoError(t, err)
	base := nc.NumSubscriptions()
	a, err := producer.NewAwaiter(ctx, js)
	require.NoError(t, err)
	t.Cleanup(a.Stop)

	type result struct {
		outs []producer.Outcome
		err  error
	}
	done := make(chan result, 1)
	go func() {
		outs, err := a.AwaitMany(ctx, seqs)
		done <- result{outs, err}
	}()

	requireOne := func() {
		t.Helper()
		require.Equal(t, base+1, nc.NumSubscriptions(), "subscriptions of the awaiter's connection")
		info, err := events.Info(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, info.State.Consumers, "consumers on %s", messages.StreamEvents)
	}
	requireOne()
	select {
	case r := <-done:
		t.Fatalf("AwaitMany returned before any outcome could exist: %v", r.err)
	default:
	}

	s.startWorker()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatal("the outcomes did not arrive")
	}
	require.NoError(t, r.err)
	requireOne()
	require.Len(t, r.outs, n)
	created, rejected := map[string]int{}, map[string]int{}
	for i, o := range r.outs {
		require.Equal(t, seqs[i], o.CommandSeq)
		switch {
		case o.Created != nil:
			created[o.Created.WalletID]++
		case o.Rejected != nil:
			require.Equal(t, messages.CodeAlreadyExists, o.Rejected.Code, "%s", o.Data)
			rejected[o.Rejected.WalletID]++
		default:
			t.Fatalf("outcome %d is neither: %+v", i, o)
		}
	}
	require.Len(t, created, n-n/10, "one balance per wallet")
	for w, c := range created {
		require.Equal(t, 1, c, w)
	}
	require.Len(t, rejected, n/10)

	// Awaited again, from many goroutines at once: the kept outcomes.
	var wg sync.WaitGroup
	for _, part := range [][]uint64{seqs[:500], seqs[500:], seqs[250:750]} {
		wg.Go(func() {
			outs, err := a.AwaitMany(ctx, part)
			assert.NoError(t, err)
			assert.Len(t, outs, len(part))
		})
	}
	wg.Wait()
}

func TestAwaiterForgetsBeyondRetain(t *testing.T) {
	t.Parallel()
	s := setup(t, true)
	ctx := testContext(t)
	p := producer.New(s.js)
	a, err := producer.NewAwaiter(ctx, s.js, producer.WithRetain(2))
	require.NoError(t, err)
	t.Cleanup(a.Stop)

	var seqs []uint64
	for i := range 3 {
		ack, err := p.Publish(ctx, messages.CreateBalance{WalletID: fmt.Sprintf("r%d", i), Name: "x"}, producer.NewKey())
		require.NoError(t, err)
		seqs = append(seqs, ack.Seq)
		_, err = a.Await(ctx, ack.Seq) // in order: the first is the oldest
		require.NoError(t, err)
	}
	_, err = a.AwaitMany(ctx, seqs[1:])
	require.NoError(t, err)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = a.Await(short, seqs[0])
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestKeys(t *testing.T) {
	t.Parallel()
	k := producer.KeyFrom("orders", "42")
	require.NoError(t, messages.ValidateKey(k))
	require.Len(t, k, 64)
	require.Equal(t, k, producer.KeyFrom("orders", "42"))
	require.NotEqual(t, k, producer.KeyFrom("orders", "43"))
	require.NotEqual(t, k, producer.KeyFrom("refunds", "42"))
	require.NotEqual(t, producer.KeyFrom("ab", "c"), producer.KeyFrom("a", "bc"))
	require.NotEqual(t, producer.KeyFrom("a\x00", "b"), producer.KeyFrom("a", "\x00b"))
	require.NoError(t, messages.ValidateKey(producer.KeyFrom(strings.Repeat("é", 1000), "\x00\n")))

	seen := map[string]bool{}
	for range 1000 {
		k := producer.NewKey()
		require.NoError(t, messages.ValidateKey(k))
		require.Len(t, k, 32)
		_, err := hex.DecodeString(k)
		require.NoError(t, err)
		require.False(t, seen[k])
		seen[k] = true
	}
}
