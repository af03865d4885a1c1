package ledgeradapter

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"sync"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// tokenSource hands out the cached client-credentials token; oauth2's
// ReuseTokenSource refreshes it shortly before expiry. invalidate drops it
// early when the ledger refuses it (a revoked token, rotated keys), so the
// next attempt fetches a new one instead of failing until expiry.
type tokenSource struct {
	newSource func() oauth2.TokenSource

	mu  sync.Mutex
	src oauth2.TokenSource
	gen uint64
}

func newTokenSource(cfg Config, hc *http.Client) *tokenSource {
	cc := &clientcredentials.Config{
		ClientID:     cfg.ClientID,
		ClientSecret: cfg.ClientSecret,
		TokenURL:     cfg.TokenURL,
		Scopes:       cfg.Scopes,
	}
	// Token fetches do not see the request's context (an oauth2 limit):
	// hc.Timeout bounds them instead.
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, hc)
	ts := &tokenSource{newSource: func() oauth2.TokenSource { return cc.TokenSource(ctx) }}
	ts.src = ts.newSource()
	return ts
}

// token returns the current token and the generation of the source it came
// from, for invalidate.
func (t *tokenSource) token() (*oauth2.Token, uint64, error) {
	t.mu.Lock()
	src, gen := t.src, t.gen
	t.mu.Unlock()
	tok, err := src.Token()
	if err != nil {
		return nil, gen, sanitizeTokenError(err)
	}
	return tok, gen, nil
}

// invalidate forgets the cached token, unless another caller already did
// since generation gen was handed out.
func (t *tokenSource) invalidate(gen uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.gen == gen {
		t.src = t.newSource()
		t.gen++
	}
}

// sanitizeTokenError keeps what helps an operator (status, OAuth error code,
// network error) and drops the token endpoint's body, which oauth2 quotes in
// its errors and which we do not want in logs.
func sanitizeTokenError(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		te := &TokenError{OAuthCode: re.ErrorCode}
		if re.Response != nil {
			te.StatusCode = re.Response.StatusCode
		}
		return te
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// net/http strips the password from the URL it reports.
		return &TokenError{Err: ue}
	}
	return &TokenError{Err: errors.New("invalid token response")}
}
