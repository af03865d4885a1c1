package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// Wire names are spelled out here rather than taken from package messages:
// they are SPEC §3, and a test that derived them would follow a rename.
const (
	createdPrefix  = "wallets.events.balance-created."
	rejectedPrefix = "wallets.events.balance-create-rejected."
	dlqPrefix      = "wallets.dlq.create-balance."
)

func markerKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "wallets/balances/idempotency/" + hex.EncodeToString(sum[:])
}

// requireEventHeaders checks the SPEC §3 headers of the outcome event of the
// command stored at ack with key.
func requireEventHeaders(t *testing.T, ev received, key string, ack *jetstream.PubAck) {
	t.Helper()
	require.Equal(t, []string{key}, ev.Header["Wallets-Command-Key"])
	require.Equal(t, []string{seqString(ack)}, ev.Header["Wallets-Command-Seq"])
	require.Equal(t, []string{key + ":" + seqString(ack)}, ev.Header["Nats-Msg-Id"])
}

func TestCreateBalance(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const key = "create-1"
	m := cmd("wallet-1", key, `{"walletID":"wallet-1","name":"savings","priority":2,"expiresAt":"2027-01-01T00:00:00+02:00"}`)
	ack := b.publish(t, m)
	require.False(t, ack.Duplicate)

	ev := single(t, b.events.wait(t, 1))
	require.Equal(t, createdPrefix+"wallet-1", ev.Subject)
	requireEventHeaders(t, ev, key, ack)
	require.JSONEq(t, `{"key":"create-1","walletID":"wallet-1",
		"balance":{"name":"savings","priority":2,"expiresAt":"2026-12-31T22:00:00Z"},
		"ledger":"wallets-002","account":"wallets:wallet1:savings","replayed":false}`, string(ev.Data))

	// SPEC §4: exactly the wallets service's keys and the replay marker.
	md := b.account(t, "wallets:wallet1:savings")
	marker, ok := md[markerKey(key)]
	require.True(t, ok, "replay marker missing from %v", md)
	delete(md, markerKey(key))
	require.Equal(t, map[string]string{
		"wallets/id":                 "wallet-1",
		"wallets/balances":           "true",
		"wallets/balances/name":      "savings",
		"wallets/balances/expiresAt": "2026-12-31T22:00:00Z",
		"wallets/balances/priority":  "2",
	}, md)
	var mk map[string]any
	require.NoError(t, json.Unmarshal([]byte(marker), &mk))
	require.Equal(t, "savings", mk["name"])
	require.Equal(t, "2026-12-31T22:00:00Z", mk["expiresAt"])
	require.Equal(t, float64(2), mk["priority"])
	require.Equal(t, 1, b.setMetadataLogs(t))

	// The same key again, inside the duplicate window: JetStream drops it.
	dup := b.publish(t, m)
	require.True(t, dup.Duplicate)
	require.Equal(t, ack.Sequence, dup.Sequence)

	b.settled(t)
	require.Len(t, b.events.all(), 1)
	require.Empty(t, b.dlq.all())
	require.Equal(t, uint64(1), b.deliveries(t))
	require.Equal(t, 1, b.setMetadataLogs(t))
}

// A key republished after the duplicate window is a new stored command: it
// gets its own event, a replay, and the ledger is not written again.
func TestRepublishAfterDuplicateWindowReplays(t *testing.T) {
	t.Parallel()
	b := setup(t, withConfig(func(c *Config) { c.DuplicateWindow = time.Second }))
	const key = "republish-1"
	m := cmd("w1", key, `{"walletID":"w1","name":"savings","priority":1}`)
	first := b.publish(t, m)
	created := single(t, b.events.wait(t, 1))
	require.False(t, created.json(t)["replayed"].(bool))

	again := b.publishAfterWindow(t, m)
	require.NotEqual(t, first.Sequence, again.Sequence)
	b.settled(t)
	evs := b.events.all()
	require.Len(t, evs, 2)
	replay := evs[1]
	require.Equal(t, createdPrefix+"w1", replay.Subject)
	requireEventHeaders(t, replay, key, again)
	require.JSONEq(t, `{"key":"republish-1","walletID":"w1",
		"balance":{"name":"savings","priority":1,"expiresAt":null},
		"ledger":"wallets-002","account":"wallets:w1:savings","replayed":true}`, string(replay.Data))
	require.Equal(t, 1, b.setMetadataLogs(t))
	require.Empty(t, b.dlq.all())
}

// The same key with other fields after the window is KEY_REUSED: an ordinary
// outcome, not a dead letter.
func TestKeyReusedAfterDuplicateWindow(t *testing.T) {
	t.Parallel()
	b := setup(t, withConfig(func(c *Config) { c.DuplicateWindow = time.Second }))
	const key = "reused-1"
	b.publish(t, cmd("w1", key, `{"walletID":"w1","name":"savings","priority":1}`))
	b.events.wait(t, 1)

	ack := b.publishAfterWindow(t, cmd("w1", key, `{"walletID":"w1","name":"savings","priority":2}`))
	b.settled(t)
	evs := b.events.all()
	require.Len(t, evs, 2)
	rej := evs[1]
	require.Equal(t, rejectedPrefix+"w1", rej.Subject)
	requireEventHeaders(t, rej, key, ack)
	require.Equal(t, "KEY_REUSED", rej.json(t)["code"])
	require.Empty(t, b.dlq.all())
	require.Equal(t, 1, b.setMetadataLogs(t))
	require.Equal(t, "1", b.account(t, "wallets:w1:savings")["wallets/balances/priority"])
}

func TestAlreadyExists(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.publish(t, cmd("w1", "first", body("w1", "savings")))
	b.events.wait(t, 1)
	ack := b.publish(t, cmd("w1", "second", `{"walletID":"w1","name":"savings","priority":7}`))

	b.settled(t)
	evs := b.events.all()
	require.Len(t, evs, 2)
	rej := evs[1]
	require.Equal(t, rejectedPrefix+"w1", rej.Subject)
	requireEventHeaders(t, rej, "second", ack)
	got := rej.json(t)
	require.Equal(t, "ALREADY_EXISTS", got["code"])
	require.Equal(t, "second", got["key"])
	require.Equal(t, "w1", got["walletID"])
	require.Equal(t, "savings", got["name"])
	require.Empty(t, b.dlq.all())
	require.Equal(t, 1, b.setMetadataLogs(t))
}

// SPEC §4: a balance the wallets service created over HTTP with key K is a
// replay for a command with K and the same fields, KEY_REUSED with other
// fields, ALREADY_EXISTS under another key.
func TestBalanceCreatedByWalletsService(t *testing.T) {
	t.Parallel()
	b := setup(t)
	seed := func(name, key string, priority int) {
		t.Helper()
		_, err := b.ledger.AddAccountMetadata(context.Background(), testLedger, "wallets:w1:"+name, map[string]string{
			"wallets/id": "w1", "wallets/balances": "true", "wallets/balances/name": name,
			"wallets/balances/expiresAt": "", "wallets/balances/priority": strconv.Itoa(priority),
			markerKey(key): `{"name":"` + name + `","expiresAt":null,"priority":` + strconv.Itoa(priority) + `}`,
		}, key)
		require.NoError(t, err)
	}
	seed("same", "svc-same", 3)
	seed("other", "svc-other", 3)

	replay := b.publish(t, cmd("w1", "svc-same", `{"walletID":"w1","name":"same","priority":3}`))
	reused := b.publish(t, cmd("w1", "svc-other", `{"walletID":"w1","name":"other","priority":4}`))
	exists := b.publish(t, cmd("w1", "another-key", `{"walletID":"w1","name":"same","priority":3}`))
	b.settled(t)

	bySeq := map[string]received{}
	for _, ev := range b.events.all() {
		bySeq[ev.Header.Get("Wallets-Command-Seq")] = ev
	}
	require.Len(t, bySeq, 3)
	require.Equal(t, createdPrefix+"w1", bySeq[seqString(replay)].Subject)
	require.Equal(t, true, bySeq[seqString(replay)].json(t)["replayed"])
	require.Equal(t, "KEY_REUSED", bySeq[seqString(reused)].json(t)["code"])
	require.Equal(t, "ALREADY_EXISTS", bySeq[seqString(exists)].json(t)["code"])
	require.Empty(t, b.dlq.all())
	require.Equal(t, 2, b.setMetadataLogs(t), "only the two seeded writes")
}

// Every command that can never be applied gets one INVALID_COMMAND event and
// one dead letter, is terminated on its first delivery, and does not stop the
// worker.
func TestInvalidCommands(t *testing.T) {
	t.Parallel()
	withKey := func(subjectWallet, key, body string) func() *nats.Msg {
		return func() *nats.Msg { return cmd(subjectWallet, key, body) }
	}
	const maxBody = 64 << 10
	small := body("w1", "savings")
	tooBig := small + strings.Repeat(" ", maxBody+1-len(small)) // valid JSON, one byte too many

	for _, tc := range []struct {
		name   string
		msg    func() *nats.Msg
		wallet string // last token of the event and dead-letter subjects
		field  string // the reason names it
		// then, when set, runs after the common checks.
		then func(t *testing.T, b *bundle, bad *jetstream.PubAck)
	}{
		{name: "body not JSON", msg: withKey("w1", "k", `{"walletID":"w1",`), wallet: "w1", field: "body"},
		{name: "body not an object", msg: withKey("w1", "k", `["w1"]`), wallet: "w1", field: "body"},
		{name: "unknown field", msg: withKey("w1", "k", `{"walletID":"w1","name":"savings","colour":"red"}`), wallet: "w1", field: "colour"},
		{name: "missing Nats-Msg-Id", wallet: "w1", field: "Nats-Msg-Id", msg: func() *nats.Msg {
			m := cmd("w1", "", small)
			delete(m.Header, "Nats-Msg-Id")
			return m
		}},
		{
			// JetStream stores an empty Nats-Msg-Id and does not deduplicate on
			// it: a second such publish is stored too, and rejected too.
			name: "empty Nats-Msg-Id", msg: withKey("w1", "", small), wallet: "w1", field: "Nats-Msg-Id",
			then: func(t *testing.T, b *bundle, bad *jetstream.PubAck) {
				again := b.publish(t, cmd("w1", "", small))
				require.False(t, again.Duplicate)
				require.NotEqual(t, bad.Sequence, again.Sequence)
				dl := b.dlq.wait(t, 2)[1]
				require.Equal(t, seqString(again), dl.Header.Get("Wallets-Original-Seq"))
				b.settled(t)
			},
		},
		{name: "key over 200 bytes", msg: withKey("w1", strings.Repeat("k", 201), small), wallet: "w1", field: "Nats-Msg-Id"},
		{name: "key with a control character", msg: withKey("w1", "bad\x01key", small), wallet: "w1", field: "Nats-Msg-Id"},
		{name: "key with a tab", msg: withKey("w1", "bad\tkey", small), wallet: "w1", field: "Nats-Msg-Id"},
		{
			// JetStream deduplicates on the first value: a later command
			// with that key is dropped although this one had no valid key.
			name: "two Nats-Msg-Id values", wallet: "w1", field: "Nats-Msg-Id",
			msg: func() *nats.Msg {
				m := cmd("w1", "dup-a", small)
				m.Header.Add("Nats-Msg-Id", "dup-b")
				return m
			},
			then: func(t *testing.T, b *bundle, bad *jetstream.PubAck) {
				first := b.publish(t, cmd("w2", "dup-a", body("w2", "savings")))
				require.True(t, first.Duplicate, "deduplicated on the first value")
				require.Equal(t, bad.Sequence, first.Sequence)
				second := b.publish(t, cmd("w2", "dup-b", body("w2", "savings")))
				require.False(t, second.Duplicate, "the second value is not a dedupe key")
				b.events.wait(t, 3)
				b.settled(t)
			},
		},
		{
			// The rejection goes to the body's wallet, the one the event
			// body names, not to the subject's.
			name: "subject wallet differs from walletID", msg: withKey("w1", "k", body("w2", "savings")), wallet: "w1", field: "walletID",
		},
		{name: "subject wallet with a dot", msg: withKey("w1.x", "k", body("w1", "savings")), wallet: "_", field: "subject"},
		{name: "walletID not a token", msg: withKey("w1", "k", body("w 1", "savings")), wallet: "w1", field: "walletID"},
		{name: "name main", msg: withKey("w1", "k", body("w1", "main")), wallet: "w1", field: "name"},
		{name: "name with a colon", msg: withKey("w1", "k", body("w1", "a:b")), wallet: "w1", field: "name"},
		{name: "name with a dot", msg: withKey("w1", "k", body("w1", "a.b")), wallet: "w1", field: "name"},
		{name: "name missing", msg: withKey("w1", "k", `{"walletID":"w1"}`), wallet: "w1", field: "name"},
		{name: "priority not an integer", msg: withKey("w1", "k", `{"walletID":"w1","name":"s","priority":1.5}`), wallet: "w1", field: "priority"},
		{name: "expiresAt not RFC 3339", msg: withKey("w1", "k", `{"walletID":"w1","name":"s","expiresAt":"2027-01-01"}`), wallet: "w1", field: "expiresAt"},
		{name: "body over 64 KiB", msg: withKey("w1", "k", tooBig), wallet: "w1", field: "body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			badMsg := tc.msg()
			bad := b.publish(t, badMsg)
			require.False(t, bad.Duplicate)
			good := b.publish(t, cmd("ok", "good-key", body("ok", "savings")))

			b.events.wait(t, 2)
			b.settled(t)
			require.Equal(t, uint64(2), b.deliveries(t), "each command delivered once")

			var rejected, created []received
			for _, ev := range b.events.all() {
				requirePrintableHeaders(t, ev.Header)
				if strings.HasPrefix(ev.Subject, rejectedPrefix) {
					rejected = append(rejected, ev)
				} else {
					created = append(created, ev)
				}
			}
			ok := single(t, created)
			require.Equal(t, createdPrefix+"ok", ok.Subject, "the worker goes on after a bad command")
			requireEventHeaders(t, ok, "good-key", good)

			rej := single(t, rejected)
			require.Equal(t, rejectedPrefix+tc.wallet, rej.Subject)
			require.Equal(t, []string{seqString(bad)}, rej.Header["Wallets-Command-Seq"])
			got := rej.json(t)
			require.Equal(t, "INVALID_COMMAND", got["code"])
			require.Contains(t, got["message"], tc.field)

			dl := single(t, b.dlq.all())
			require.Equal(t, dlqPrefix+tc.wallet, dl.Subject)
			require.Equal(t, badMsg.Data, dl.Data, "body intact")
			for k, vs := range badMsg.Header {
				require.Equal(t, vs, dl.Header[k], "original header %s intact", k)
			}
			require.Equal(t, []string{"INVALID_COMMAND"}, dl.Header["Wallets-Dlq-Code"])
			require.Contains(t, dl.Header.Get("Wallets-Dlq-Reason"), tc.field)
			require.Equal(t, []string{badMsg.Subject}, dl.Header["Wallets-Original-Subject"])
			require.Equal(t, []string{seqString(bad)}, dl.Header["Wallets-Original-Seq"])
			require.Equal(t, []string{"1"}, dl.Header["Wallets-Deliveries"])
			require.Equal(t, 1, b.setMetadataLogs(t), "only the good command wrote")

			if tc.then != nil {
				tc.then(t, b, bad)
			}
		})
	}
}

// A command larger than the stream's MaxMsgSize (64 KiB of body + 4096) never
// reaches the worker: JetStream refuses the publish.
func TestOversizeCommandRefusedByJetStream(t *testing.T) {
	t.Parallel()
	b := setup(t)
	small := body("w1", "savings")
	huge := small + strings.Repeat(" ", 64<<10+4096-len(small)) // with headers, over the limit
	_, err := b.js.PublishMsg(context.Background(), cmd("w1", "huge", huge))
	require.Error(t, err)
	var apiErr *jetstream.APIError
	require.True(t, errors.As(err, &apiErr), "%T: %v", err, err)
	require.Equal(t, jetstream.JSErrCodeStreamMessageExceedsMaximum, apiErr.ErrorCode)
	require.Zero(t, b.commandsLeft(t))
}

func requirePrintableHeaders(t *testing.T, h nats.Header) {
	t.Helper()
	for k, vs := range h {
		for _, v := range vs {
			for i := 0; i < len(v); i++ {
				require.True(t, v[i] >= 0x20 && v[i] <= 0x7e, "header %s=%q has byte 0x%02x", k, v, v[i])
			}
		}
	}
}

// Two stored commands with one key that are both dead-lettered (the key
// republished after the commands' duplicate window) each keep their dead
// letter: the dead letters carry the key as Nats-Msg-Id, so the dead-letter
// stream must not deduplicate them by it.
func TestDeadLettersOfOneKeyAreAllKept(t *testing.T) {
	t.Parallel()
	// The commands' window is longer than the dead letters' (1s): the
	// republish comes a window after the first publish, and its dead letter
	// must come after the first dead letter's window has passed, even when
	// the first delivery was the slower one.
	b := setup(t, withConfig(func(c *Config) { c.DuplicateWindow = 3 * time.Second }))
	m := cmd("w1", "dlq-key", `{"walletID":"w1","name":"main"}`)
	first := b.publish(t, m)
	b.dlq.wait(t, 1)
	again := b.publishAfterWindow(t, m)
	require.NotEqual(t, first.Sequence, again.Sequence)
	b.settled(t)
	dl := b.dlq.wait(t, 2)
	require.Len(t, dl, 2)
	require.Equal(t, seqString(first), dl[0].Header.Get("Wallets-Original-Seq"))
	require.Equal(t, seqString(again), dl[1].Header.Get("Wallets-Original-Seq"))
	require.Len(t, b.events.all(), 2)

	// Whatever the commands' window, the dead letters' stays short: a dead
	// letter comes at the earliest a retry budget after its command.
	for _, sc := range (Config{DuplicateWindow: time.Hour}).StreamConfigs() {
		if sc.Name == "WALLETS_DLQ" {
			require.Equal(t, time.Second, sc.Duplicates)
		}
	}
}

// TestDeadLetterOfACommandPublishedWithExpectations: a command published with
// a publish condition (the producer package and `dlq redrive` expect the
// stream) is dead-lettered without it; copied, the condition made JetStream
// refuse every dead-letter publish.
func TestDeadLetterOfACommandPublishedWithExpectations(t *testing.T) {
	t.Parallel()
	b := setup(t)
	m := cmd("w1", "expect-key", `{"walletID":"w1","name":"main"}`)
	_, err := b.js.PublishMsg(context.Background(), m, jetstream.WithExpectStream("WALLETS_COMMANDS"))
	require.NoError(t, err)
	dl := b.dlq.wait(t, 1)
	require.Equal(t, "expect-key", dl[0].Header.Get("Nats-Msg-Id"))
	require.Empty(t, dl[0].Header.Get("Nats-Expected-Stream"))
	b.settled(t)
}
