package testutil

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
)

// LedgerOptions configures StartLedger. The zero value is a durable ledger
// in a new t.TempDir(), served as it is, with a client that times out after
// 30s.
type LedgerOptions struct {
	// Dir holds the ledger's files; empty is a new t.TempDir().
	Dir string
	// InMemory keeps the ledger in memory (Dir is ignored).
	InMemory bool
	// Wrap, when set, sits in front of the ledger's handler: faults,
	// delays, authentication.
	Wrap func(http.Handler) http.Handler
	// TLS serves HTTPS with the httptest server's own certificate
	// (Server.Certificate()); Client trusts it.
	TLS bool
	// Client configures Client: BaseURL is the server's, a zero Timeout is
	// 30s, and with TLS a nil HTTPClient is one that trusts the server.
	Client ledgeradapter.Config
	// Options are passed to embeddedledger.Open.
	Options []embeddedledger.Option
}

// Ledger is an embedded ledger served over HTTP by an httptest server.
type Ledger struct {
	*embeddedledger.Ledger
	// URL is the server's base URL.
	URL string
	// Server is the httptest server, closed when the test ends.
	Server *httptest.Server
	// Client is a ledger client of URL.
	Client *ledgeradapter.Client
}

// StartLedger serves an embedded ledger over HTTP in the test process until
// the test ends.
func StartLedger(t T, o LedgerOptions) *Ledger {
	t.Helper()
	dir := o.Dir
	switch {
	case o.InMemory:
		dir = ""
	case dir == "":
		dir = t.TempDir()
	}
	l, err := embeddedledger.Open(dir, o.Options...)
	require.NoError(t, err)
	h := l.Handler()
	if o.Wrap != nil {
		h = o.Wrap(h)
	}
	srv := httptest.NewUnstartedServer(h)
	if o.TLS {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(func() {
		srv.Close()
		require.NoError(t, l.Close())
	})
	cfg := o.Client
	cfg.BaseURL = srv.URL
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if o.TLS && cfg.HTTPClient == nil {
		cfg.HTTPClient = srv.Client()
	}
	return &Ledger{Ledger: l, URL: srv.URL, Server: srv, Client: newClient(t, cfg)}
}

// LedgerClient is a ledger client of url with timeout, its idle connections
// closed when the test ends.
func LedgerClient(t T, url string, timeout time.Duration) *ledgeradapter.Client {
	t.Helper()
	return newClient(t, ledgeradapter.Config{BaseURL: url, Timeout: timeout})
}

func newClient(t T, cfg ledgeradapter.Config) *ledgeradapter.Client {
	t.Helper()
	c, err := ledgeradapter.NewClient(cfg)
	require.NoError(t, err)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// WalletMoves lists every transaction of ledger, oldest first, as the
// money the wallets service's accounts (wallets:<wallet>:…) saw move:
// "+<amount>" for a transaction whose first posting comes from @world (a
// credit), "-<amount>" for one whose first posting leaves a wallet's account
// (a debit), by wallet. The money tests compare it with what they published.
func WalletMoves(t T, c *ledgeradapter.Client, ledger string) map[string][]string {
	t.Helper()
	moves := map[string][]string{}
	var newestFirst []ledgeradapter.Transaction
	cursor := ""
	for {
		page, err := c.ListTransactions(context.Background(), ledger, nil, 100, cursor)
		require.NoError(t, err)
		newestFirst = append(newestFirst, page.Data...)
		if page.Next == "" {
			break
		}
		cursor = page.Next
	}
	for i := len(newestFirst) - 1; i >= 0; i-- {
		p := newestFirst[i].Postings[0]
		if p.Source == "world" {
			w := strings.Split(p.Destination, ":")[1]
			moves[w] = append(moves[w], "+"+p.Amount.String())
		} else {
			w := strings.Split(p.Source, ":")[1]
			moves[w] = append(moves[w], "-"+p.Amount.String())
		}
	}
	return moves
}

// PlannedMoves is what WalletMoves reads once the commands of plan are
// applied in plan order: by wallet, named as the ledger's accounts name it
// (without its dashes, as the wallets service writes it), "+<amount>" for
// a credit and "-<amount>" for a debit. move tells each command's wallet,
// kind and amount.
func PlannedMoves[T any](plan []T, move func(T) (wallet string, credit bool, amount int64)) map[string][]string {
	want := map[string][]string{}
	for _, c := range plan {
		wallet, credit, amount := move(c)
		sign := "-"
		if credit {
			sign = "+"
		}
		w := strings.ReplaceAll(wallet, "-", "")
		want[w] = append(want[w], fmt.Sprint(sign, amount))
	}
	return want
}
