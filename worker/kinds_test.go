package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/messages"
)

// pingKind is a kind the worker has never heard of, written the way a new
// kind is: its wire names, its decision, its refusals. The worker moves it
// without a line of its own.
type pingKind struct{}

type ping struct {
	WalletID string `json:"walletID"`
	Fail     bool   `json:"fail"`
}

type pingResult struct {
	event, wallet string
	body          map[string]any
	code          messages.Code
	reason        string
}

func (r pingResult) Event() (string, string, any) { return r.event, r.wallet, r.body }
func (r pingResult) Code() messages.Code          { return r.code }
func (r pingResult) Reason() string               { return r.reason }
func (r pingResult) Label() string                { return strings.ToLower(string(r.code)) + "ping" }
func (pingResult) Replayed() bool                 { return false }

func (pingKind) Name() string { return "ping" }

func (pingKind) Decode(subject string, data []byte) (handlers.Command, error) {
	var p ping
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, err
	}
	if subject != "wallets.commands.ping."+p.WalletID {
		return p, errors.New("subject and walletID differ")
	}
	return p, nil
}

func (pingKind) Reject(key, subject string, cmd handlers.Command, code messages.Code, message string) handlers.Result {
	wallet := messages.WalletFromSubject(subject)
	return pingResult{event: "ping-rejected", wallet: wallet, code: code, reason: message,
		body: map[string]any{"key": key, "code": code, "message": message}}
}

func (p ping) Handle(_ context.Context, key string) (handlers.Result, error) {
	if p.Fail {
		return nil, &handlers.RetryError{Err: errors.New("ping cannot be decided")}
	}
	return pingResult{event: "pinged", wallet: p.WalletID, body: map[string]any{"key": key, "walletID": p.WalletID}}, nil
}

func kindMsg(kind, wallet, key, body string) *nats.Msg {
	m := &nats.Msg{Subject: fmt.Sprintf("wallets.commands.%s.%s", kind, wallet), Header: nats.Header{}, Data: []byte(body)}
	m.Header.Set(messages.HeaderMsgID, key)
	return m
}

// TestAnyKindThroughOnePipeline: a second kind, registered beside
// create-balance, is decided, settled, retried and dead-lettered by the same
// pipeline; a command of a kind nobody registered is INVALID_COMMAND.
func TestAnyKindThroughOnePipeline(t *testing.T) {
	t.Parallel()
	b := setup(t, withKinds(pingKind{}), withConfig(func(c *Config) { c.MaxDeliver = 2 }))

	pinged := b.publish(t, kindMsg("ping", "w1", "k-ping", `{"walletID":"w1"}`))
	created := b.publish(t, cmd("w2", "k-balance", body("w2", "savings")))
	b.publish(t, kindMsg("ping", "w3", "k-bad", `{"walletID":"other"}`))
	b.publish(t, kindMsg("nope", "w4", "k-unknown", `{}`))
	b.publish(t, kindMsg("ping", "w5", "k-fail", `{"walletID":"w5","fail":true}`))

	events := b.events.wait(t, 5)
	bySubject := map[string]received{}
	for _, e := range events {
		bySubject[e.Subject] = e
	}
	require.ElementsMatch(t, []string{
		"wallets.events.pinged.w1",
		"wallets.events.balance-created.w2",
		"wallets.events.ping-rejected.w3",
		"wallets.events.command-rejected.w4",
		"wallets.events.ping-rejected.w5",
	}, subjectsOnly(events))
	require.Equal(t, messages.EventMsgID("k-ping", pinged.Sequence), bySubject["wallets.events.pinged.w1"].Header.Get(messages.HeaderMsgID))
	require.Equal(t, messages.EventMsgID("k-balance", created.Sequence), bySubject["wallets.events.balance-created.w2"].Header.Get(messages.HeaderMsgID))
	require.Equal(t, string(messages.CodeInvalidCommand), bySubject["wallets.events.ping-rejected.w3"].json(t)["code"])
	require.Equal(t, string(messages.CodeInvalidCommand), bySubject["wallets.events.command-rejected.w4"].json(t)["code"])
	require.Contains(t, bySubject["wallets.events.command-rejected.w4"].json(t)["message"], `unknown command kind "nope"`)
	require.Equal(t, string(messages.CodeRetriesExhausted), bySubject["wallets.events.ping-rejected.w5"].json(t)["code"])

	dead := b.dlq.wait(t, 3)
	require.ElementsMatch(t, []string{"wallets.dlq.ping.w3", "wallets.dlq.unknown.w4", "wallets.dlq.ping.w5"}, subjectsOnly(dead))
	b.settled(t)
}

// TestWorkerNamesNoKind: the pipeline's code names no kind, its wire names
// or its decision; kinds come only through handlers.Kind.
func TestWorkerNamesNoKind(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || f == "claim.go" {
			// claim.go is the JetStream claims store a kind may use
			// (handlers.Claimer); it names none either, but speaks of balances.
			continue
		}
		src, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, name := range []string{"create-balance", "CreateBalance", "balance-created", "balance-create-rejected", "BalanceCreate"} {
			require.NotContains(t, string(src), name, "%s names the kind %s", f, name)
		}
	}
}

func subjectsOnly(msgs []received) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.Subject
	}
	return out
}
