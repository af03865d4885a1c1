package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/wallets-worker/wallets-worker/tracing"
)

// DefaultServiceName is the service.name of the spans when OTEL_SERVICE_NAME
// is not set (SPEC §5).
const DefaultServiceName = "wallets-worker"

// The environment variables Start reads itself. The OTLP exporters and the
// SDK read the others they know (OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT,
// _CERTIFICATE, _COMPRESSION, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG,
// OTEL_BSP_*, OTEL_RESOURCE_ATTRIBUTES) from the process environment.
const (
	EnvSDKDisabled          = "OTEL_SDK_DISABLED"
	EnvTracesExporter       = "OTEL_TRACES_EXPORTER"
	EnvEndpoint             = "OTEL_EXPORTER_OTLP_ENDPOINT"
	EnvTracesEndpoint       = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	EnvProtocol             = "OTEL_EXPORTER_OTLP_PROTOCOL"
	EnvTracesProtocol       = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	EnvServiceName          = "OTEL_SERVICE_NAME"
	protocolHTTPProtobuf    = "http/protobuf"
	protocolGRPC            = "grpc"
	exporterOTLP            = "otlp"
	exporterNone            = "none"
	defaultHTTPTracesSuffix = "/v1/traces"
)

// Provider is the tracing of a process: an SDK tracer provider exporting over
// OTLP, or nothing. The zero value and nil are "nothing".
type Provider struct {
	sdk      *sdktrace.TracerProvider
	endpoint string
	protocol string
}

// Start reads the OTEL_* variables through getenv (os.Getenv when nil) and
// sets up the SDK when they ask for export:
//   - OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none: nothing;
//   - OTEL_TRACES_EXPORTER=otlp, or an OTLP endpoint set
//     (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT):
//     OTLP export, over OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL http/protobuf
//     (default) or grpc, of spans batched by a BatchSpanProcessor, with
//     service.name OTEL_SERVICE_NAME (default DefaultServiceName);
//   - none of them set: nothing (unlike the SDK's own default of exporting to
//     localhost, SPEC §5 wants no export unless asked).
//
// A value it does not support (another exporter or protocol) is an error.
// Start sets nothing global; see Install.
func Start(ctx context.Context, getenv func(string) string) (*Provider, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	get := func(k string) string { return strings.TrimSpace(getenv(k)) }
	if strings.EqualFold(get(EnvSDKDisabled), "true") {
		return &Provider{}, nil
	}
	exporter := strings.ToLower(get(EnvTracesExporter))
	traces, generic := get(EnvTracesEndpoint), get(EnvEndpoint)
	switch exporter {
	case exporterNone:
		return &Provider{}, nil
	case "":
		if traces == "" && generic == "" {
			return &Provider{}, nil
		}
	case exporterOTLP:
	default:
		return nil, fmt.Errorf("%s=%q: only %q and %q are supported", EnvTracesExporter, getenv(EnvTracesExporter), exporterOTLP, exporterNone)
	}

	protocol := strings.ToLower(get(EnvTracesProtocol))
	if protocol == "" {
		protocol = strings.ToLower(get(EnvProtocol))
	}
	if protocol == "" {
		protocol = protocolHTTPProtobuf
	}
	var (
		exp      sdktrace.SpanExporter
		endpoint string
		err      error
	)
	switch protocol {
	case protocolHTTPProtobuf:
		var opts []otlptracehttp.Option
		switch {
		case traces != "":
			endpoint = traces
		case generic != "":
			endpoint = strings.TrimRight(generic, "/") + defaultHTTPTracesSuffix
		}
		if endpoint != "" {
			opts = append(opts, otlptracehttp.WithEndpointURL(endpoint))
		}
		exp, err = otlptracehttp.New(ctx, opts...)
	case protocolGRPC:
		var opts []otlptracegrpc.Option
		endpoint = traces
		if endpoint == "" {
			endpoint = generic
		}
		if endpoint != "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(endpoint))
		}
		exp, err = otlptracegrpc.New(ctx, opts...)
	default:
		return nil, fmt.Errorf("OTLP protocol %q: only %q and %q are supported", protocol, protocolHTTPProtobuf, protocolGRPC)
	}
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}

	name := get(EnvServiceName)
	if name == "" {
		name = DefaultServiceName
	}
	// Later detectors win: OTEL_RESOURCE_ATTRIBUTES over the default name,
	// OTEL_SERVICE_NAME over both.
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(DefaultServiceName)),
		resource.WithFromEnv(),
		resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceName(name)),
	)
	if err != nil && res == nil {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	if endpoint == "" {
		endpoint = "the exporter's default"
	}
	return &Provider{
		sdk: sdktrace.NewTracerProvider(
			sdktrace.WithBatcher(exp),
			sdktrace.WithResource(res),
			sdktrace.WithIDGenerator(tracing.IDGenerator()),
		),
		endpoint: endpoint,
		protocol: protocol,
	}, nil
}

// Enabled reports whether spans are exported.
func (p *Provider) Enabled() bool { return p != nil && p.sdk != nil }

// TracerProvider is the provider to trace with: the SDK's, or the global
// one (a no-op unless the program installed another) when nothing exports.
func (p *Provider) TracerProvider() trace.TracerProvider {
	if !p.Enabled() {
		return otel.GetTracerProvider()
	}
	return p.sdk
}

// Install makes p the global tracer provider and W3C Trace Context the
// global propagator, and reports the SDK's errors (a collector that cannot be
// reached, say) to log. It does nothing when p does not export, so that a
// process without tracing keeps the no-op globals.
func (p *Provider) Install(log *slog.Logger) {
	if !p.Enabled() {
		return
	}
	otel.SetTracerProvider(p.sdk)
	otel.SetTextMapPropagator(tracing.Propagator)
	if log != nil {
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			log.Warn("tracing", "error", err)
		}))
		log.Info("exporting traces over OTLP", "protocol", p.protocol, "endpoint", p.endpoint)
	}
}

// Shutdown exports the spans not exported yet and stops the exporter; ctx
// bounds how long it waits. It is a no-op when nothing exports.
func (p *Provider) Shutdown(ctx context.Context) error {
	if !p.Enabled() {
		return nil
	}
	err := p.sdk.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("spans not flushed in time: %w", err)
	}
	return err
}
