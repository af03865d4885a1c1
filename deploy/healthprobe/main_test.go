package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestProbe(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			_, _ = w.Write([]byte(`{"status":"ok"}`))
		case "/readyz":
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"ledger":"connection refused"}` + "\n"))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)

	ctx := func(t *testing.T) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	t.Run("2xx is healthy", func(t *testing.T) {
		t.Parallel()
		require.NoError(t, probe(ctx(t), srv.URL+"/healthz"))
	})
	t.Run("503 is unhealthy and says why", func(t *testing.T) {
		t.Parallel()
		err := probe(ctx(t), srv.URL+"/readyz")
		require.ErrorContains(t, err, `503 Service Unavailable {"ledger":"connection refused"}`)
	})
	t.Run("404 is unhealthy", func(t *testing.T) {
		t.Parallel()
		require.ErrorContains(t, probe(ctx(t), srv.URL+"/nope"), "404")
	})
	t.Run("nothing listening is unhealthy", func(t *testing.T) {
		t.Parallel()
		closed := httptest.NewServer(http.NotFoundHandler())
		url := closed.URL
		closed.Close()
		require.Error(t, probe(ctx(t), url+"/healthz"))
	})
}
