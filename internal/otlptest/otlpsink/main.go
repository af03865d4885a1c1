// Command otlpsink is an OTLP/HTTP trace receiver that decodes every export
// and counts the spans, for measuring what exporting costs the worker
// (docs/tracing.md):
//
//	go run ./internal/otlptest/otlpsink -addr 127.0.0.1:4318 &
//	OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 go run ./cmd/wallets-worker bench --ledger null
//
// It prints the totals when interrupted.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wallets-worker/wallets-worker/internal/otlptest"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:4318", "listen address")
	flag.Parse()
	rcv := otlptest.New()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "otlpsink:", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: rcv, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	fmt.Fprintf(os.Stderr, "otlpsink: receiving OTLP/HTTP traces on http://%s%s\n", ln.Addr(), otlptest.TracesPath)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	_ = srv.Close()
	fmt.Printf("otlpsink: %d export requests, %d spans, first error: %v\n", rcv.Requests(), len(rcv.Spans()), rcv.Err())
}
