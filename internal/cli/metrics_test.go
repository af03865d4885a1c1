package cli

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	out := map[string]float64{}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case m.GetCounter() != nil:
				out[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[key] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				out[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func TestMetricsCountEachOutcome(t *testing.T) {
	b := setup(t, "--duplicate-window", "1s")
	_, js := testutil.Connect(t, b.addrs.NATSURL)

	publish := func(key, body string) {
		m := &nats.Msg{Subject: messages.CreateBalanceSubject("w1"), Data: []byte(body), Header: nats.Header{}}
		m.Header.Set(messages.HeaderMsgID, key)
		_, err := js.PublishMsg(context.Background(), m)
		require.NoError(t, err)
	}
	wait := func(total float64) map[string]float64 {
		var m map[string]float64
		require.Eventually(t, func() bool {
			m = scrape(t, b.addrs.HTTPAddr)
			sum := 0.0
			for k, v := range m {
				if strings.HasPrefix(k, "wallets_worker_commands_total{") {
					sum += v
				}
			}
			// A settle counts the command, then its dead letter and its
			// times: a scrape may fall between them.
			return sum == total && m["wallets_worker_command_age_seconds_count"] == total
		}, 20*time.Second, 50*time.Millisecond)
		return m
	}

	publish("a", `{"walletID":"w1","name":"one","priority":1}`) // created
	publish("b", `{"walletID":"w1","name":"two"}`)              // created
	wait(2)                                                     // so that "a", not "c", creates "one"
	publish("c", `{"walletID":"w1","name":"one"}`)              // already exists
	publish("d", `{"walletID":"w1","name":"x","bogus":1}`)      // invalid
	publish("e", `{"walletID":"w1","name":"main"}`)             // invalid
	wait(5)
	time.Sleep(1100 * time.Millisecond)                         // past the 1s duplicate window, so "a" is stored again
	publish("a", `{"walletID":"w1","name":"one","priority":1}`) // replayed
	publish("b", `{"walletID":"w1","name":"two","priority":9}`) // key reused
	m := wait(7)

	for outcome, want := range map[string]float64{
		"created": 2, "replayed": 1, "already_exists": 1, "key_reused": 1, "invalid": 2,
		"ledger_rejected": 0, "retries_exhausted": 0,
	} {
		require.Equal(t, want, m["wallets_worker_commands_total{kind=create-balance}{outcome="+outcome+"}"], outcome)
	}
	require.Equal(t, 2.0, m["wallets_worker_dead_letters_total{code=INVALID_COMMAND}{kind=create-balance}"])
	// Each kind is counted under its own label, one no worker has under
	// "unknown".
	for _, c := range []struct{ subject, key, body string }{
		{"wallets.commands.credit-wallet.w1", "cr", `{"walletID":"w1","amount":{"asset":"USD/2","amount":5}}`},
		{"wallets.commands.transfer.w1", "tr", `{}`},
	} {
		msg := &nats.Msg{Subject: c.subject, Data: []byte(c.body), Header: nats.Header{}}
		msg.Header.Set(messages.HeaderMsgID, c.key)
		_, err := js.PublishMsg(context.Background(), msg)
		require.NoError(t, err)
	}
	m = wait(9)
	require.Equal(t, 1.0, m["wallets_worker_commands_total{kind=credit-wallet}{outcome=created}"])
	require.Equal(t, 0.0, m["wallets_worker_commands_total{kind=credit-wallet}{outcome=invalid}"], "every kind's series shows from the start")
	require.Equal(t, 1.0, m["wallets_worker_commands_total{kind=unknown}{outcome=invalid}"])
	require.Equal(t, 1.0, m["wallets_worker_dead_letters_total{code=INVALID_COMMAND}{kind=unknown}"])
	require.Equal(t, 9.0, m["wallets_worker_handling_seconds_count"])
	require.Equal(t, 9.0, m["wallets_worker_command_age_seconds_count"])
	require.Equal(t, 0.0, m["wallets_worker_commands_in_flight"])
	// 5 valid commands read their account, once more after each wait for
	// another command's claim ("c" may race "a"); 2 of them wrote it.
	require.Equal(t, 5.0+m["wallets_worker_claim_waits_total"], m["wallets_worker_ledger_requests_total{endpoint=GetAccount}{status=200}"]+m["wallets_worker_ledger_requests_total{endpoint=GetAccount}{status=404}"])
	require.Equal(t, 2.0, m["wallets_worker_ledger_requests_total{endpoint=AddAccountMetadata}{status=204}"])

	// Nothing secret, nothing unexpected: only our metrics and the Go
	// runtime's are served.
	resp, err := http.Get("http://" + b.addrs.HTTPAddr + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(body), "wallets_worker_retries_total")
}
