package deploy_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

	composetypes "github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/wallets-worker/wallets-worker/internal/telemetry"
)

// collectorConfig is the part of deploy/otel-collector.yaml the test reads.
type collectorConfig struct {
	Receivers struct {
		OTLP struct {
			Protocols struct {
				GRPC struct{ Endpoint string } `json:"grpc"`
				HTTP struct{ Endpoint string } `json:"http"`
			} `json:"protocols"`
		} `json:"otlp"`
	} `json:"receivers"`
	Exporters map[string]struct {
		Endpoint string `json:"endpoint"`
		TLS      struct {
			Insecure bool `json:"insecure"`
		} `json:"tls"`
	} `json:"exporters"`
	Service struct {
		Pipelines map[string]struct {
			Receivers []string `json:"receivers"`
			Exporters []string `json:"exporters"`
		} `json:"pipelines"`
	} `json:"service"`
}

// TestComposeTracingProfile: COMPOSE_PROFILES=tracing adds the collector and
// Jaeger and points the ledger, the workers and publish-sample at the
// collector; without it nothing exports. The worker's side is checked with
// the tracing set-up the binary runs.
func TestComposeTracingProfile(t *testing.T) {
	t.Parallel()
	getenv := func(env map[string]string) func(string) string {
		return func(k string) string { return env[k] }
	}

	off := loadCompose(t)
	require.NotContains(t, off.ServiceNames(), "otel-collector")
	require.NotContains(t, off.ServiceNames(), "jaeger")
	for _, name := range []string{"worker", "publish-sample"} {
		s, err := off.GetService(name)
		require.NoError(t, err)
		tel, err := telemetry.Start(context.Background(), getenv(environment(t, s)))
		require.NoError(t, err)
		require.False(t, tel.Enabled(), "%s exports without the tracing profile", name)
	}
	ledger, err := off.GetService("ledger")
	require.NoError(t, err)
	require.Empty(t, environment(t, ledger)["OTEL_TRACES_EXPORTER"], "the ledger traces without the profile")

	on := loadComposeWith(t, []string{"COMPOSE_PROFILES=tracing"}, []string{"tracing"})
	require.Subset(t, on.ServiceNames(), []string{"otel-collector", "jaeger"})
	for _, s := range on.Services {
		require.NoError(t, checkPinned(s.Image), "service %s", s.Name)
		// COMPOSE_PROFILES switches the export on: it must mean this profile.
		if len(s.Profiles) > 0 {
			require.Equal(t, []string{"tracing"}, s.Profiles, "service %s", s.Name)
		}
	}
	for _, name := range []string{"worker", "publish-sample"} {
		s, err := on.GetService(name)
		require.NoError(t, err)
		env := environment(t, s)
		requireServiceURL(t, on, env["OTEL_EXPORTER_OTLP_ENDPOINT"], "otel-collector", "4318")
		tel, err := telemetry.Start(context.Background(), getenv(env))
		require.NoError(t, err, name)
		require.True(t, tel.Enabled(), "%s does not export with the tracing profile", name)
		require.NoError(t, tel.Shutdown(context.Background()))
	}
	ledger, err = on.GetService("ledger")
	require.NoError(t, err)
	lenv := environment(t, ledger)
	require.Equal(t, "otlp", lenv["OTEL_TRACES_EXPORTER"])
	require.Equal(t, "grpc", lenv["OTEL_TRACES_EXPORTER_OTLP_MODE"])
	host, port, err := net.SplitHostPort(lenv["OTEL_TRACES_EXPORTER_OTLP_ENDPOINT"])
	require.NoError(t, err)
	require.Equal(t, "otel-collector", host)
	require.Equal(t, "4317", port)

	// The collector receives on both ports and sends to Jaeger.
	col, err := on.GetService("otel-collector")
	require.NoError(t, err)
	i := slices.IndexFunc(col.Volumes, func(v composetypes.ServiceVolumeConfig) bool {
		return v.Target == "/etc/otelcol/config.yaml"
	})
	require.GreaterOrEqual(t, i, 0, "the collector's config is mounted")
	require.Contains(t, col.Command, "--config="+col.Volumes[i].Target)
	abs, err := filepath.Abs(repoRoot)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(abs, "deploy", "otel-collector.yaml"), col.Volumes[i].Source)
	raw, err := os.ReadFile(col.Volumes[i].Source)
	require.NoError(t, err)
	var cfg collectorConfig
	require.NoError(t, yaml.Unmarshal(raw, &cfg))
	require.Equal(t, "0.0.0.0:4317", cfg.Receivers.OTLP.Protocols.GRPC.Endpoint)
	require.Equal(t, "0.0.0.0:4318", cfg.Receivers.OTLP.Protocols.HTTP.Endpoint)
	traces, ok := cfg.Service.Pipelines["traces"]
	require.True(t, ok)
	require.Equal(t, []string{"otlp"}, traces.Receivers)
	require.Len(t, traces.Exporters, 1)
	exp, ok := cfg.Exporters[traces.Exporters[0]]
	require.True(t, ok, "exporter %s is defined", traces.Exporters[0])
	host, port, err = net.SplitHostPort(exp.Endpoint)
	require.NoError(t, err)
	require.Equal(t, "jaeger", host)
	require.Equal(t, "4317", port)
	require.True(t, exp.TLS.Insecure, "Jaeger's OTLP port in the compose network is plain gRPC")
}
