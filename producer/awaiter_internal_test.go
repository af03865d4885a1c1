package producer

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

// TestAwaiterFillsAGap: when the consumer hands the Awaiter stream
// sequences 1 and then 3, the event at 2 was lost on the way to this client;
// the Awaiter reads it from the stream, so a caller awaiting its command
// gets it rather than waiting for good.
func TestAwaiterFillsAGap(t *testing.T) {
	t.Parallel()
	ns := testutil.NATS(t)
	_, js := testutil.Connect(t, ns.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: messages.StreamEvents, Subjects: []string{messages.SubjectEvents}})
	require.NoError(t, err)
	for i := 1; i <= 3; i++ {
		m := &nats.Msg{Subject: fmt.Sprintf("wallets.events.balance-created.w%d", i), Header: nats.Header{},
			Data: fmt.Appendf(nil, `{"key":"k%d","walletID":"w%d","balance":{"name":"savings","priority":0,"expiresAt":null},"ledger":"l","replayed":false}`, i, i)}
		m.Header.Set(messages.HeaderCommandSeq, strconv.Itoa(10+i))
		_, err := js.PublishMsg(ctx, m)
		require.NoError(t, err)
	}
	oc, err := js.OrderedConsumer(ctx, messages.StreamEvents, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	fetched, err := oc.Fetch(3)
	require.NoError(t, err)
	var msgs []jetstream.Msg
	for m := range fetched.Messages() {
		msgs = append(msgs, m)
	}
	require.Len(t, msgs, 3)

	a := &Awaiter{js: js, retain: DefaultRetain, stopped: make(chan struct{}), seen: map[uint64]event{}, waiting: map[uint64][]*batch{}}
	a.receive(msgs[0])
	a.receive(msgs[2]) // 2 never reaches the Awaiter through its consumer
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
	defer wcancel()
	out, err := a.AwaitMany(wctx, []uint64{11, 12, 13})
	require.NoError(t, err, "the lost event is read from the stream")
	for i, o := range out {
		require.Equal(t, uint64(11+i), o.CommandSeq)
		require.Equal(t, fmt.Sprintf("wallets.events.balance-created.w%d", i+1), o.Subject)
		require.NotNil(t, o.Created)
	}
}
