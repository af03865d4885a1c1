package testutil

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/embeddednats"
)

// NATS starts nats-server with JetStream in the test process, on a free port
// of 127.0.0.1, its files in a new t.TempDir(), and shuts it down when the
// test ends. ns.ClientURL() is its address.
func NATS(t T) *server.Server {
	t.Helper()
	return NATSWith(t, embeddednats.Options{})
}

// NATSWith is NATS with o: a fixed Addr (a test that restarts the server on
// the same port), a StoreDir that outlives the server (an empty one is a new
// t.TempDir()), a ServerName. Shutting the server down earlier is allowed.
func NATSWith(t T, o embeddednats.Options) *server.Server {
	t.Helper()
	if o.StoreDir == "" {
		o.StoreDir = t.TempDir()
	}
	ns, err := embeddednats.Start(o)
	require.NoError(t, err)
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// Connect connects a client to url with opts and closes it when the test
// ends.
func Connect(t T, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return nc, js
}

// NATSServer starts nats-server with o in the test process, for a test that
// needs settings NATS does not offer (authentication, TLS, a cluster), and
// shuts it down when the test ends. An empty Host is 127.0.0.1, a zero Port
// a free one; with JetStream, an empty StoreDir is a new t.TempDir(); logs
// and signal handlers are off.
func NATSServer(t T, o *server.Options) *server.Server {
	t.Helper()
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = -1
	}
	if o.JetStream && o.StoreDir == "" {
		o.StoreDir = t.TempDir()
	}
	o.NoLog, o.NoSigs = true, true
	ns, err := server.NewServer(o)
	require.NoError(t, err)
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		t.Fatalf("nats-server %s not ready within 10s", o.ServerName)
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// StreamReader reads a stream's messages in sequence order, one by one, by
// asking the stream for each sequence: unlike an ordered consumer, it cannot
// skip a message when the test process is starved of CPU. For streams that
// delete no message (the events and dead-letter streams).
type StreamReader struct {
	stream jetstream.Stream
	next   uint64
}

// NewStreamReader reads stream from the message after the last one stored
// now (fromStart false) or from its first message.
func NewStreamReader(t T, js jetstream.JetStream, stream string, fromStart bool) *StreamReader {
	t.Helper()
	s, err := js.Stream(context.Background(), stream)
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	next := info.State.LastSeq + 1
	if fromStart {
		next = max(info.State.FirstSeq, 1)
	}
	return &StreamReader{stream: s, next: next}
}

// Next returns the next message, waiting up to timeout for it to be stored.
func (r *StreamReader) Next(timeout time.Duration) (*jetstream.RawStreamMsg, error) {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		m, err := r.stream.GetMsg(ctx, r.next)
		cancel()
		switch {
		case err == nil:
			r.next++
			return m, nil
		case !errors.Is(err, jetstream.ErrMsgNotFound) && !errors.Is(err, context.DeadlineExceeded):
			return nil, err
		case time.Now().After(deadline):
			return nil, fmt.Errorf("message %d of %s: none within %s", r.next, r.stream.CachedInfo().Config.Name, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
