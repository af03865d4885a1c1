//go:build unix

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/otlptest"
)

// Wire names of SPEC §5 and the dead-letter stream's subjects.
const (
	headerTraceparent = "traceparent"
	subjectDLQPrefix  = "wallets.dlq.create-balance."
	spanProcess       = "process wallets.commands.create-balance"
)

// traceTap records the traceparent of every request the ledger receives.
type traceTap struct {
	mu   sync.Mutex
	reqs []tappedRequest
}

type tappedRequest struct{ method, path, traceparent string }

func (tt *traceTap) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tt.mu.Lock()
		tt.reqs = append(tt.reqs, tappedRequest{r.Method, r.URL.Path, r.Header.Get(headerTraceparent)})
		tt.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// about returns the requests for one account.
func (tt *traceTap) about(account string) []tappedRequest {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	var out []tappedRequest
	for _, r := range tt.reqs {
		if strings.Contains(r.path, "/accounts/"+account) {
			out = append(out, r)
		}
	}
	return out
}

// newTraceparent returns a sampled traceparent with random IDs, and its
// trace and span IDs.
func newTraceparent(t *testing.T) (tp, traceID, spanID string) {
	t.Helper()
	b := make([]byte, 24)
	_, err := rand.Read(b)
	require.NoError(t, err)
	traceID, spanID = hex.EncodeToString(b[:16]), hex.EncodeToString(b[16:])
	return "00-" + traceID + "-" + spanID + "-01", traceID, spanID
}

// traceIDOf returns the trace ID of a traceparent header value.
func traceIDOf(tp string) string {
	parts := strings.Split(tp, "-")
	if len(parts) != 4 {
		return ""
	}
	return parts[1]
}

func spanIDOf(tp string) string {
	parts := strings.Split(tp, "-")
	if len(parts) != 4 {
		return ""
	}
	return parts[2]
}

// firstMsg reads stream from its start until a message matches.
func firstMsg(t *testing.T, js jetstream.JetStream, stream string, match func(jetstream.Msg) bool) jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), *waitFlag)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	for {
		m, err := cons.Next(jetstream.FetchMaxWait(*waitFlag))
		require.NoError(t, err, "waiting for a message on %s", stream)
		if match(m) {
			return m
		}
	}
}

func byKey(key string) func(jetstream.Msg) bool {
	return func(m jetstream.Msg) bool {
		return m.Headers().Get(headerCommandKey) == key || m.Headers().Get(headerMsgID) == key
	}
}

// spansOf returns the exported spans of one trace, by name.
func spansOf(spans []otlptest.Span, traceID string) map[string][]otlptest.Span {
	out := map[string][]otlptest.Span{}
	for _, s := range spans {
		if s.TraceID == traceID {
			out[s.Name] = append(out[s.Name], s)
		}
	}
	return out
}

func spanIDs(spans map[string][]otlptest.Span) []string {
	var ids []string
	for _, ss := range spans {
		for _, s := range ss {
			ids = append(ids, s.SpanID)
		}
	}
	return ids
}

// TestTraceThroughTheBinary runs `wallets-worker run` exporting to an
// OTLP/HTTP receiver in process. A command published with a traceparent: its
// outcome event, every ledger request made for it and the spans exported
// carry its trace ID; so do an invalid command's dead letter and rejection.
// `publish create-balance` starts the trace of its command. The batch
// processor is told to wait an hour, so the spans arrive only through the
// flush at shutdown.
func TestTraceThroughTheBinary(t *testing.T) {
	natsURL := startNATS(t)
	tap := &traceTap{}
	ledger := startLedger(t, tap.wrap)
	rcv := otlptest.New()
	collector := httptest.NewServer(rcv)
	t.Cleanup(collector.Close)
	otelEnv := []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + collector.URL,
		"OTEL_BSP_SCHEDULE_DELAY=3600000",
	}
	w := startWorkerEnv(t, "traced", otelEnv,
		"--nats-url", natsURL, "--ledger-url", ledger.URL, "--data-dir", t.TempDir())
	require.Contains(t, w.logs.String(), "exporting traces over OTLP")
	_, js := connectNATS(t, natsURL)

	publish := func(wallet, key, body, traceparent string) {
		m := nats.NewMsg(subjectCommandPrefix + wallet)
		m.Data = []byte(body)
		m.Header.Set(headerMsgID, key)
		if traceparent != "" {
			m.Header.Set(headerTraceparent, traceparent)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := js.PublishMsg(ctx, m)
		require.NoError(t, err)
	}
	okTP, okTrace, okParent := newTraceparent(t)
	badTP, badTrace, badParent := newTraceparent(t)
	okCmd := command{Key: "trace-ok", WalletID: "tw1", Name: "savings"}
	publish(okCmd.WalletID, okCmd.Key, string(okCmd.body()), okTP)
	publish("tw2", "trace-bad", `{"walletID":"tw2"}`, badTP)
	publish("tw3", "trace-none", string(command{WalletID: "tw3", Name: "savings"}.body()), "")

	// The CLI publisher, tracing to the same receiver.
	pub := exec.Command(workerBinary, "publish", "create-balance", "--nats-url", natsURL,
		"--wallet", "tw4", "--name", "savings", "--key", "trace-cli", "--wait", "--timeout", waitFlag.String())
	pub.Env = append(workerEnv(), otelEnv...)
	out, err := pub.CombinedOutput()
	require.NoError(t, err, "publish: %s", out)

	okEvent := firstMsg(t, js, streamEvents, byKey(okCmd.Key))
	badEvent := firstMsg(t, js, streamEvents, byKey("trace-bad"))
	noneEvent := firstMsg(t, js, streamEvents, byKey("trace-none"))
	cliEvent := firstMsg(t, js, streamEvents, byKey("trace-cli"))
	dead := firstMsg(t, js, streamDLQ, byKey("trace-bad"))
	require.True(t, strings.HasPrefix(okEvent.Subject(), subjectCreatedPrefix), okEvent.Subject())
	require.True(t, strings.HasPrefix(dead.Subject(), subjectDLQPrefix), dead.Subject())

	// On the wire: the events, the dead letter and the ledger requests.
	require.Equal(t, okTrace, traceIDOf(okEvent.Headers().Get(headerTraceparent)), "outcome event")
	require.Equal(t, badTrace, traceIDOf(badEvent.Headers().Get(headerTraceparent)), "rejection event")
	require.Equal(t, badTrace, traceIDOf(dead.Headers().Get(headerTraceparent)), "dead letter")
	require.NotEqual(t, badParent, spanIDOf(dead.Headers().Get(headerTraceparent)), "the dead letter carries the worker's span, not the command's")
	noneTrace := traceIDOf(noneEvent.Headers().Get(headerTraceparent))
	require.Len(t, noneTrace, 32, "a command without trace context starts a trace")
	cliTrace := traceIDOf(cliEvent.Headers().Get(headerTraceparent))
	require.Len(t, cliTrace, 32, "publish create-balance starts a trace")
	reqs := tap.about(okCmd.account())
	require.GreaterOrEqual(t, len(reqs), 2, "a read and a write for the command")
	for _, r := range reqs {
		require.Equal(t, okTrace, traceIDOf(r.traceparent), "%s %s", r.method, r.path)
	}
	t.Logf("command %s published with trace %s: event %s, dead letter of %s: %s", okCmd.Key, okTrace,
		okEvent.Headers().Get(headerTraceparent), "trace-bad", dead.Headers().Get(headerTraceparent))
	for _, r := range reqs {
		t.Logf("ledger %s %s traceparent %s", r.method, r.path, r.traceparent)
	}

	// The spans arrive with the flush at shutdown.
	for _, s := range rcv.Spans() { // only the publisher's, flushed when it exited
		require.NotEqual(t, spanProcess, s.Name, "the worker exported before its shutdown: the batch delay was not an hour")
	}
	w.stop(t)
	require.NoError(t, rcv.Err())
	spans := rcv.Spans()

	ok := spansOf(spans, okTrace)
	require.Len(t, ok[spanProcess], 1, "the consumer span in the command's trace: %v", names(ok))
	consumer := ok[spanProcess][0]
	require.Equal(t, okParent, consumer.ParentSpanID, "child of the producer's span")
	require.Equal(t, "wallets-worker", consumer.Service)
	require.Equal(t, okCmd.Key, consumer.Attributes["messaging.message.id"])
	require.Equal(t, "created", consumer.Attributes["wallets.outcome"])
	for _, name := range []string{"claim balance", "ledger GetAccount", "ledger AddAccountMetadata", "send wallets.events.balance-created", "ack wallets.commands.create-balance"} {
		require.Len(t, ok[name], 1, "%s in the command's trace: %v", name, names(ok))
		require.Equal(t, consumer.SpanID, ok[name][0].ParentSpanID, name)
	}
	require.Equal(t, consumer.SpanID, spanIDOf(okEvent.Headers().Get(headerTraceparent)), "the event carries the consumer span")
	exported := spanIDs(ok)
	for _, r := range reqs {
		require.Contains(t, exported, spanIDOf(r.traceparent), "the client span of %s %s was exported", r.method, r.path)
	}

	bad := spansOf(spans, badTrace)
	require.Len(t, bad[spanProcess], 1, "%v", names(bad))
	require.Equal(t, badParent, bad[spanProcess][0].ParentSpanID)
	require.True(t, bad[spanProcess][0].StatusError, "a dead letter marks the span failed")
	require.Equal(t, bad[spanProcess][0].SpanID, spanIDOf(dead.Headers().Get(headerTraceparent)))
	require.Len(t, bad["send wallets.dlq.create-balance"], 1, "%v", names(bad))
	require.True(t, w.logs.Contains("trace_id="+badTrace), "the dead-letter log line names the trace")

	none := spansOf(spans, noneTrace)
	require.Len(t, none[spanProcess], 1, "%v", names(none))
	require.Empty(t, none[spanProcess][0].ParentSpanID, "a new trace: the consumer span is its root")

	cli := spansOf(spans, cliTrace)
	for _, name := range []string{"publish create-balance", "send wallets.commands.create-balance", spanProcess} {
		require.Len(t, cli[name], 1, "%s in the publisher's trace: %v", name, names(cli))
	}
	require.Empty(t, cli["publish create-balance"][0].ParentSpanID)
	require.Equal(t, cli["publish create-balance"][0].SpanID, cli["send wallets.commands.create-balance"][0].ParentSpanID)
	require.Equal(t, cli["send wallets.commands.create-balance"][0].SpanID, cli[spanProcess][0].ParentSpanID)

	t.Logf("exported %d spans in %d requests; trace %s: %v; trace %s: %v; trace %s: %v", len(spans), rcv.Requests(),
		okTrace, names(ok), badTrace, names(bad), cliTrace, names(cli))
}

func names(spans map[string][]otlptest.Span) []string {
	var out []string
	for n, ss := range spans {
		for range ss {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}
