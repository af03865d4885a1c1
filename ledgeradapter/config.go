package ledgeradapter

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Defaults of Config.
const (
	// DefaultTimeout bounds one HTTP exchange with the ledger. It must stay
	// below the handler's deadline, itself below the consumer's AckWait.
	DefaultTimeout = 5 * time.Second

	// DefaultTimeoutPerElement is what a request gets on top of Timeout
	// for each element beyond the first: a bulk of 100 has Timeout + 9.9s,
	// under the handler's deadline (20s by default).
	DefaultTimeoutPerElement = 100 * time.Millisecond

	// MaxIdleConnsPerHost is sized for a few hundred commands in flight
	// against one ledger without reopening connections.
	MaxIdleConnsPerHost = 256
)

// DefaultScopes are the OAuth2 scopes asked for when Config.Scopes is empty:
// the ones the ledger checks with AUTH_CHECK_SCOPES (CONTRACT §7).
var DefaultScopes = []string{"ledger:read", "ledger:write"}

// Config configures a Client.
type Config struct {
	// BaseURL of the ledger, e.g. http://127.0.0.1:3068 or
	// https://stack.example/api/ledger; "/v2/..." is appended. Required.
	BaseURL string

	// Timeout bounds each request of one element (connect, send, wait,
	// read the body). Default DefaultTimeout.
	Timeout time.Duration
	// TimeoutPerElement is added to Timeout for each element of a
	// ListAccounts or Bulk request beyond the first, so that the time a
	// request gets grows with the work in it (default
	// DefaultTimeoutPerElement; negative: none).
	TimeoutPerElement time.Duration

	// SequentialBulk sends bulks without parallel=true, so that the ledger
	// runs their elements one after another. By default a bulk of two or
	// more elements asks for parallel=true: on the real ledger that is
	// about 1.4 times the write rate of single requests, and sequential
	// bulks are below it (Client.Bulk says how results are matched then).
	SequentialBulk bool

	// ClientID, ClientSecret and TokenURL switch on OAuth2 client
	// credentials; all empty means plain HTTP without a token. With a
	// Formance stack the token URL is <stack>/api/auth/oauth/token.
	ClientID, ClientSecret, TokenURL string

	// Scopes asked for with the token. Default DefaultScopes.
	Scopes []string

	// HTTPClient is an optional base, e.g. for custom TLS. When its
	// Transport is an *http.Transport, a clone of it is used with the pool
	// and timeout settings below filled in where unset; any other
	// RoundTripper is used as is. Its Timeout is ignored: Config.Timeout
	// applies per request.
	HTTPClient *http.Client

	// Observe, when set, is called after every request with the operation
	// (GetAccount, AddAccountMetadata, …), the HTTP status (0 when no answer
	// came) and the time from sending to the end of the answer: the hook for
	// metrics.
	Observe func(op string, status int, d time.Duration)

	// TxConcurrency caps the transaction requests (CreateTransaction) in
	// flight at once from this client, whatever its callers' concurrency
	// (default DefaultTxConcurrency, which says why).
	TxConcurrency int

	// Logger receives the client's rare reports (a ledger that stopped
	// answering transactions). Default: discarded.
	Logger *slog.Logger

	// TracerProvider makes the client span of every request, which carries
	// the W3C traceparent of the caller's context to the ledger (default:
	// the global provider, a no-op unless the program installed an SDK;
	// the traceparent is sent either way).
	TracerProvider trace.TracerProvider
}

func (c *Config) setDefaults() {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.TimeoutPerElement == 0 {
		c.TimeoutPerElement = DefaultTimeoutPerElement
	}
	if c.TxConcurrency == 0 {
		c.TxConcurrency = DefaultTxConcurrency
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if len(c.Scopes) == 0 {
		c.Scopes = append([]string(nil), DefaultScopes...)
	}
}

// TimeoutFor is the timeout of a request of n elements (Timeout for one).
func (c Config) TimeoutFor(n int) time.Duration {
	c.setDefaults()
	return c.Timeout + time.Duration(max(n-1, 0))*max(c.TimeoutPerElement, 0)
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.BaseURL == "" {
		errs = append(errs, errors.New("ledgeradapter: BaseURL is required"))
	} else if err := checkHTTPURL(c.BaseURL); err != nil {
		errs = append(errs, fmt.Errorf("ledgeradapter: BaseURL: %w", err))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("ledgeradapter: Timeout must be positive, got %s", c.Timeout))
	}
	if c.TxConcurrency < 0 {
		errs = append(errs, fmt.Errorf("ledgeradapter: TxConcurrency must be positive, got %d", c.TxConcurrency))
	}
	if c.ClientID != "" || c.ClientSecret != "" || c.TokenURL != "" {
		if c.ClientID == "" {
			errs = append(errs, errors.New("ledgeradapter: ClientID is required with ClientSecret or TokenURL"))
		}
		if c.ClientSecret == "" {
			errs = append(errs, errors.New("ledgeradapter: ClientSecret is required with ClientID"))
		}
		if c.TokenURL == "" {
			errs = append(errs, errors.New("ledgeradapter: TokenURL is required with ClientID"))
		} else if err := checkHTTPURL(c.TokenURL); err != nil {
			errs = append(errs, fmt.Errorf("ledgeradapter: TokenURL: %w", err))
		}
	}
	return errors.Join(errs...)
}

// checkHTTPURL accepts absolute http(s) URLs without query or fragment. Its
// errors never quote the URL, which may carry credentials.
func checkHTTPURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a valid URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("scheme must be http or https, got %q", u.Scheme)
	case u.Host == "":
		return errors.New("host is missing")
	case u.RawQuery != "" || u.Fragment != "":
		return errors.New("must not have a query or a fragment")
	}
	return nil
}
