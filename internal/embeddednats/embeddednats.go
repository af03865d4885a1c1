// Package embeddednats runs the real nats-server, with JetStream, inside the
// current process: for `wallets-worker run` without --nats-url and for tests.
// It is internal: other programs should run a NATS server of their own.
package embeddednats

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configures an embedded server.
type Options struct {
	// Addr is host:port to listen on; port 0 or -1 picks a free port.
	Addr string
	// StoreDir is where JetStream keeps its files.
	StoreDir string
	// ServerName defaults to "wallets-worker-embedded".
	ServerName string
	// ReadyTimeout bounds the wait for the server to accept connections
	// (default 10s).
	ReadyTimeout time.Duration
}

// Start starts a server and waits until it accepts connections. The caller
// shuts it down with Shutdown and WaitForShutdown.
func Start(o Options) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("embeddednats: StoreDir is required")
	}
	host, port := "127.0.0.1", -1
	if o.Addr != "" {
		h, p, err := net.SplitHostPort(o.Addr)
		if err != nil {
			return nil, fmt.Errorf("embeddednats: address %q: %w", o.Addr, err)
		}
		if h != "" {
			host = h
		}
		if port, err = strconv.Atoi(p); err != nil {
			return nil, fmt.Errorf("embeddednats: port %q: %w", p, err)
		}
		if port == 0 {
			port = -1
		}
	}
	if o.ServerName == "" {
		o.ServerName = "wallets-worker-embedded"
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 10 * time.Second
	}
	s, err := server.NewServer(&server.Options{
		ServerName: o.ServerName,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 1 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("embeddednats: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(o.ReadyTimeout) {
		s.Shutdown()
		return nil, fmt.Errorf("embeddednats: not ready to accept connections on %s:%d within %s", host, port, o.ReadyTimeout)
	}
	return s, nil
}
