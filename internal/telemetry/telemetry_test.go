package telemetry

import (
	"context"
	"net/http/httptest"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/otlptest"
	"github.com/wallets-worker/wallets-worker/tracing"
)

const (
	testTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	testTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
)

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestStartWithoutEnvironmentExportsNothing(t *testing.T) {
	t.Parallel()
	for name, getenv := range map[string]func(string) string{
		"nothing set":   env(),
		"exporter none": env(EnvTracesExporter, "none", EnvEndpoint, "http://127.0.0.1:1"),
		"sdk disabled":  env(EnvSDKDisabled, "true", EnvTracesExporter, "otlp"),
		"protocol only": env(EnvProtocol, "grpc", EnvServiceName, "x"),
	} {
		p, err := Start(context.Background(), getenv)
		require.NoError(t, err, name)
		require.False(t, p.Enabled(), name)
		require.NoError(t, p.Shutdown(context.Background()), name)
	}
}

func TestStartRefusesWhatItCannotDo(t *testing.T) {
	t.Parallel()
	for name, getenv := range map[string]func(string) string{
		"console exporter": env(EnvTracesExporter, "console"),
		"json protocol":    env(EnvEndpoint, "http://127.0.0.1:4318", EnvProtocol, "http/json"),
	} {
		_, err := Start(context.Background(), getenv)
		require.Error(t, err, name)
	}
}

func TestStartGRPC(t *testing.T) {
	t.Parallel()
	p, err := Start(context.Background(), env(EnvEndpoint, "http://127.0.0.1:4317", EnvTracesProtocol, "grpc"))
	require.NoError(t, err)
	require.True(t, p.Enabled())
	require.Equal(t, "grpc", p.protocol)
	require.NoError(t, p.Shutdown(context.Background()))
}

// TestStartExportsOverHTTP starts the SDK against an OTLP/HTTP receiver and
// checks that Shutdown flushes the spans, with the service name.
func TestStartExportsOverHTTP(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		env     []string
		service string
	}{
		"generic endpoint, default name": {env: []string{EnvEndpoint, "URL/"}, service: DefaultServiceName},
		"traces endpoint, named":         {env: []string{EnvTracesEndpoint, "URL/v1/traces", EnvServiceName, "billing"}, service: "billing"},
		"otlp exporter, named":           {env: []string{EnvTracesExporter, "otlp", EnvEndpoint, "URL", EnvServiceName, "w2"}, service: "w2"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rcv := otlptest.New()
			srv := httptest.NewServer(rcv)
			t.Cleanup(srv.Close)
			kv := append([]string(nil), tc.env...)
			for i := 1; i < len(kv); i += 2 {
				if len(kv[i]) >= 3 && kv[i][:3] == "URL" {
					kv[i] = srv.URL + kv[i][3:]
				}
			}
			p, err := Start(context.Background(), env(kv...))
			require.NoError(t, err)
			require.True(t, p.Enabled())
			parent := tracing.Extract(context.Background(), nats.Header{"traceparent": {testTraceparent}})
			_, span := p.TracerProvider().Tracer("test").Start(parent, "one")
			span.End()
			require.NoError(t, p.Shutdown(context.Background()))
			require.NoError(t, rcv.Err())
			spans := rcv.Spans()
			require.Len(t, spans, 1)
			require.Equal(t, "one", spans[0].Name)
			require.Equal(t, testTraceID, spans[0].TraceID)
			require.Equal(t, "00f067aa0ba902b7", spans[0].ParentSpanID)
			require.Equal(t, tc.service, spans[0].Service)
		})
	}
}
