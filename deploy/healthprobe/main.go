// Command healthprobe is the container health check of the wallets-worker
// image: it GETs one URL and exits 0 on a 2xx answer, 1 on anything else.
//
// Docker runs a health check inside the container, and the distroless image
// has no shell, curl or wget, so docker-compose.yml runs this instead:
//
//	healthprobe http://127.0.0.1:9090/readyz
//
// Kubernetes needs none of it: its probes are httpGet, made by the kubelet.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	timeout := flag.Duration("timeout", 3*time.Second, "deadline of the whole request")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: healthprobe [--timeout D] URL")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	err := probe(ctx, flag.Arg(0))
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "healthprobe:", err)
		os.Exit(1)
	}
}

// client ignores HTTP_PROXY and friends: a probe talks to its own container.
var client = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

// probe returns nil when url answers 2xx within ctx, and otherwise an error
// that carries the start of the body: /readyz says there which dependency is
// missing, and Docker keeps the output of the last checks.
func probe(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s: %s %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}
