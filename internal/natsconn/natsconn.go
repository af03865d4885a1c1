package natsconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Config is how a program connects to NATS. At most one authentication
// method may be set: CredsFile, NKeyFile, User with Password or PasswordFile,
// Token or TokenFile, or credentials written in URL. TLS is on when CAFile or
// CertFile is set (or the URL's scheme is tls://).
type Config struct {
	// URL is the server URL or URLs, comma-separated; Connect uses
	// nats.DefaultURL when it is empty. Credentials in it
	// (nats://user:password@host, nats://token@host) are an authentication
	// method of their own.
	URL string

	// CredsFile is a NATS credentials file: a user JWT and its NKey seed
	// (operator/JWT mode, e.g. Synadia Cloud).
	CredsFile string
	// NKeyFile holds a user NKey seed ("SU…") for a server that lists the
	// user's public NKey.
	NKeyFile string
	// User authenticates with Password, or with the first line of
	// PasswordFile.
	User, Password, PasswordFile string
	// Token, or the first line of TokenFile, authenticates with a token.
	Token, TokenFile string

	// CAFile is a PEM file of the CA certificates that sign the server's
	// certificate.
	CAFile string
	// CertFile and KeyFile are the client's PEM certificate and key, for a
	// server that verifies its clients (mutual TLS).
	CertFile, KeyFile string

	// InboxPrefix replaces _INBOX as the first token of the subjects that
	// replies (JetStream API answers, pulled messages, publish acks) come
	// back on. A user whose subscribe permission is limited to its own
	// prefix reads no other user's replies (deploy/nats/auth.conf). Empty:
	// see Inbox.
	InboxPrefix string
}

// Inbox is the inbox prefix a connection of c uses: InboxPrefix when set;
// otherwise, for a user given by name (User), _INBOX_ followed by the name
// with every character but letters, digits and '_' made '_', which is the
// prefix deploy/nats/auth.conf gives each of its users
// (_INBOX_wallets_worker, _INBOX_wallets_producer, ...); otherwise "",
// nats.go's _INBOX. Connect checks at once that the server lets the user
// read under it.
func (c Config) Inbox() string {
	if c.InboxPrefix != "" || c.User == "" {
		return c.InboxPrefix
	}
	b := []byte("_INBOX_" + c.User)
	for i, ch := range b {
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

// Authentication methods, as AuthMethod names them.
const (
	AuthNone         = "none"
	AuthCreds        = "creds"
	AuthNKey         = "nkey"
	AuthUserPassword = "user/password"
	AuthToken        = "token"
	AuthURL          = "url"
)

const redacted = "REDACTED"

// methods lists the authentication methods that c sets, as their flags.
func (c Config) methods() []string {
	var m []string
	if urlHasCredentials(c.URL) {
		m = append(m, "credentials in --nats-url")
	}
	if c.CredsFile != "" {
		m = append(m, "--nats-creds")
	}
	if c.NKeyFile != "" {
		m = append(m, "--nats-nkey")
	}
	if c.User != "" || c.Password != "" || c.PasswordFile != "" {
		m = append(m, "--nats-user/--nats-password")
	}
	if c.Token != "" || c.TokenFile != "" {
		m = append(m, "--nats-token")
	}
	return m
}

// AuthMethod names the authentication method c uses (AuthNone, AuthCreds,
// …). Of a Config that does not validate, it names one of those set.
func (c Config) AuthMethod() string {
	switch {
	case urlHasCredentials(c.URL):
		return AuthURL
	case c.CredsFile != "":
		return AuthCreds
	case c.NKeyFile != "":
		return AuthNKey
	case c.User != "" || c.Password != "" || c.PasswordFile != "":
		return AuthUserPassword
	case c.Token != "" || c.TokenFile != "":
		return AuthToken
	}
	return AuthNone
}

// TLS reports whether c asks for TLS.
func (c Config) TLS() bool {
	if c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" {
		return true
	}
	for _, u := range strings.Split(c.URL, ",") {
		if strings.HasPrefix(strings.TrimSpace(strings.ToLower(u)), "tls://") {
			return true
		}
	}
	return false
}

// Validate reports every problem of c at once. It reads every file c names,
// so that a missing or malformed one is reported at start, not at the first
// (re)connect.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if m := c.methods(); len(m) > 1 {
		add("NATS authentication: %s are different methods; set only one", strings.Join(m, " and "))
	}
	if c.User != "" && c.Password == "" && c.PasswordFile == "" {
		add("--nats-user needs --nats-password or --nats-password-file")
	}
	if c.User == "" && (c.Password != "" || c.PasswordFile != "") {
		add("a NATS password needs --nats-user")
	}
	if c.Password != "" && c.PasswordFile != "" {
		add("set --nats-password or --nats-password-file, not both")
	}
	if c.Token != "" && c.TokenFile != "" {
		add("set --nats-token or --nats-token-file, not both")
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		add("--nats-cert and --nats-key go together")
	}
	if p := c.InboxPrefix; p != "" && (strings.ContainsAny(p, "*> \t\r\n") || strings.HasPrefix(p, ".") || strings.HasSuffix(p, ".") || strings.Contains(p, "..")) {
		add("--nats-inbox-prefix %q: want a subject without wildcards, spaces or empty tokens", p)
	}

	file := func(flag, path string, err error) {
		var pe *fs.PathError
		if errors.As(err, &pe) { // names the file already
			add("%s: %w", flag, err)
		} else if err != nil {
			add("%s %s: %w", flag, path, err)
		}
	}
	if c.CredsFile != "" {
		file("--nats-creds", c.CredsFile, checkCreds(c.CredsFile))
	}
	if c.NKeyFile != "" {
		_, err := nats.NkeyOptionFromSeed(c.NKeyFile)
		file("--nats-nkey", c.NKeyFile, err)
	}
	if c.PasswordFile != "" {
		_, err := readSecret(c.PasswordFile)
		file("--nats-password-file", c.PasswordFile, err)
	}
	if c.TokenFile != "" {
		_, err := readSecret(c.TokenFile)
		file("--nats-token-file", c.TokenFile, err)
	}
	if c.CAFile != "" {
		file("--nats-ca", c.CAFile, checkCA(c.CAFile))
	}
	if c.CertFile != "" && c.KeyFile != "" {
		_, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		file("--nats-cert/--nats-key", c.CertFile+" "+c.KeyFile, err)
	}
	return c.scrub(errors.Join(errs...))
}

// Options returns the nats.Options of c's authentication and TLS; the caller
// adds its own (name, timeouts, reconnect handlers). It validates c first.
func (c Config) Options() ([]nats.Option, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var opts []nats.Option
	switch {
	case c.CredsFile != "":
		// Read again on every connect: a rotated file is picked up.
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	case c.NKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(c.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--nats-nkey %s: %w", c.NKeyFile, err)
		}
		opts = append(opts, o)
	case c.User != "" && c.PasswordFile != "":
		f, err := newSecretFile(c.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("--nats-password-file: %w", err)
		}
		user := c.User
		opts = append(opts, nats.UserInfoHandler(func() (string, string) { return user, f.get() }))
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.TokenFile != "":
		f, err := newSecretFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("--nats-token-file: %w", err)
		}
		opts = append(opts, nats.TokenHandler(f.get))
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	}
	if c.CAFile != "" {
		opts = append(opts, nats.RootCAs(c.CAFile))
	}
	if c.CertFile != "" {
		opts = append(opts, nats.ClientCert(c.CertFile, c.KeyFile))
	}
	if p := c.Inbox(); p != "" {
		opts = append(opts, nats.CustomInboxPrefix(p))
	}
	return opts, nil
}

// Connect validates c and connects to c.URL with c's options followed by
// extra. A refused connection is reported with the server (credentials
// removed) and the authentication method; IsAuthFailure tells an
// authentication or TLS refusal, which retrying will not fix, from a server
// that could not be reached.
func Connect(c Config, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := c.Options()
	if err != nil {
		return nil, err
	}
	u := c.URL
	if u == "" {
		u = nats.DefaultURL
	}
	nc, err := nats.Connect(u, append(opts, extra...)...)
	if err != nil {
		return nil, c.ConnectError(u, err)
	}
	if nc.IsConnected() {
		if err := c.checkInbox(nc); err != nil {
			nc.Close()
			return nil, err
		}
	}
	return nc, nil
}

// ErrInboxDenied: the server does not let the user read the replies that
// come back under its inbox prefix, so every request would time out.
var ErrInboxDenied = errors.New("the NATS server refuses this user the replies under its inbox prefix")

// checkInbox subscribes to a subject under the connection's inbox prefix
// and waits for the server to have seen the subscription: a server that
// refuses it (a user whose permissions do not cover the prefix) makes it an
// error that says so at once, where every request would otherwise wait for
// a reply that cannot come.
func (c Config) checkInbox(nc *nats.Conn) error {
	subject := nc.NewInbox()
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		return fmt.Errorf("subscribe to the inbox %s: %w", subject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		return fmt.Errorf("check the inbox %s: %w", subject, err)
	}
	if err := nc.LastError(); errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), subject) {
		prefix, from := c.Inbox(), "--nats-inbox-prefix"
		switch {
		case prefix == "":
			prefix, from = nats.InboxPrefix[:len(nats.InboxPrefix)-1], "the default"
		case c.InboxPrefix == "":
			from = "the default for --nats-user " + c.User
		}
		return fmt.Errorf("%w: %s (%s) is not one it may subscribe to; set --nats-inbox-prefix to the prefix its permissions allow (deploy/nats/auth.conf gives each user _INBOX_<user>)", ErrInboxDenied, prefix, from)
	}
	return nil
}

// ConnectError describes err, returned by nats.Connect(url, …) with c's
// options, for a person: the server without credentials, the authentication
// method, and whether the server refused it. No secret of c is in its text.
func (c Config) ConnectError(url string, err error) error {
	what := "connect to NATS " + RedactURL(url) + " (auth " + c.describeAuth()
	if c.TLS() {
		what += ", TLS"
	}
	what += ")"
	switch {
	case isTLSFailure(err):
		what += ": TLS handshake failed"
	case IsAuthFailure(err):
		what += ": authentication failed"
	}
	return c.scrub(fmt.Errorf("%s: %w", what, err))
}

// IsAuthFailure reports whether err says the server refused the client's
// credentials or the TLS handshake failed: retrying with the same settings
// will not help.
func IsAuthFailure(err error) bool {
	if err == nil {
		return false
	}
	for _, target := range []error{nats.ErrAuthorization, nats.ErrAuthExpired, nats.ErrAuthRevoked, nats.ErrAccountAuthExpired} {
		if errors.Is(err, target) {
			return true
		}
	}
	return isTLSFailure(err)
}

// isTLSFailure reports whether the TLS handshake failed on either side.
func isTLSFailure(err error) bool {
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		alert    tls.AlertError
		op       *net.OpError
	)
	// nats.ErrTLS also covers a server that closes the connection right after
	// the handshake, as one that rejects the client's certificate under TLS
	// 1.3 may, before its alert is read.
	if errors.Is(err, nats.ErrTLS) || errors.Is(err, nats.ErrSecureConnRequired) || errors.Is(err, nats.ErrSecureConnWanted) ||
		errors.As(err, &verify) || errors.As(err, &unknown) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &alert) {
		return true
	}
	// A TLS alert from the server (certificate required, bad certificate)
	// comes as a net.OpError of an unexported type.
	return errors.As(err, &op) && op.Op == "remote error" && op.Err != nil && strings.HasPrefix(op.Err.Error(), "tls: ")
}

func (c Config) describeAuth() string {
	switch c.AuthMethod() {
	case AuthUserPassword:
		s := fmt.Sprintf("user %q", c.User)
		if c.PasswordFile != "" {
			s += " with password from " + c.PasswordFile
		}
		return s
	case AuthToken:
		if c.TokenFile != "" {
			return "token from " + c.TokenFile
		}
		return "token"
	case AuthCreds:
		return "credentials " + c.CredsFile
	case AuthNKey:
		return "nkey " + c.NKeyFile
	case AuthURL:
		return "credentials in the URL"
	}
	return "none"
}

// Redacted describes c for logs: every setting, with passwords, tokens and
// credentials in URLs replaced by REDACTED. File names are kept.
func (c Config) Redacted() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("url", RedactURL(c.URL))
	add("auth", c.AuthMethod())
	add("creds", c.CredsFile)
	add("nkey", c.NKeyFile)
	add("user", c.User)
	if c.Password != "" {
		add("password", redacted)
	}
	add("password-file", c.PasswordFile)
	if c.Token != "" {
		add("token", redacted)
	}
	add("token-file", c.TokenFile)
	add("ca", c.CAFile)
	add("cert", c.CertFile)
	add("key", c.KeyFile)
	add("inbox-prefix", c.InboxPrefix)
	return strings.Join(parts, " ")
}

// String is Redacted, so that printing a Config never shows a secret.
func (c Config) String() string { return c.Redacted() }

// GoString is Redacted too, for %#v.
func (c Config) GoString() string { return "natsconn.Config{" + c.Redacted() + "}" }

// LogValue logs c as Redacted.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.Redacted()) }

// RedactURL replaces the credentials of every URL in a comma-separated list
// by REDACTED.
func RedactURL(raw string) string {
	parts := strings.Split(raw, ",")
	for i, p := range parts {
		if at := strings.LastIndex(p, "@"); at >= 0 {
			if scheme := strings.Index(p, "://"); scheme >= 0 && scheme < at {
				parts[i] = p[:scheme+3] + redacted + "@" + p[at+1:]
			} else if scheme < 0 {
				parts[i] = redacted + "@" + p[at+1:]
			}
		}
	}
	return strings.Join(parts, ",")
}

func urlHasCredentials(raw string) bool {
	for _, p := range strings.Split(raw, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !strings.Contains(p, "://") {
			p = "nats://" + p // as nats.go reads it
		}
		if u, err := url.Parse(p); err == nil && u.User != nil {
			return true
		}
		if strings.Contains(p, "@") { // unparsable, but plainly carries userinfo
			return true
		}
	}
	return false
}

// scrub removes c's secrets from err's text, should a library ever echo one.
func (c Config) scrub(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	clean := msg
	for _, s := range c.secrets() {
		clean = strings.ReplaceAll(clean, s, redacted)
	}
	if clean == msg {
		return err
	}
	return &scrubbedError{msg: clean, err: err}
}

func (c Config) secrets() []string {
	var s []string
	for _, v := range []string{c.Password, c.Token} {
		if v != "" {
			s = append(s, v)
		}
	}
	for _, p := range strings.Split(c.URL, ",") {
		if !strings.Contains(p, "://") {
			p = "nats://" + strings.TrimSpace(p)
		}
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok && pw != "" {
				s = append(s, pw)
			} else if u.User.Username() != "" {
				s = append(s, u.User.Username()) // a token
			}
		}
	}
	return s
}

// scrubbedError is an error whose text had a secret removed; errors.Is and
// errors.As still see the original.
type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

func checkCreds(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	defer wipe(data)
	jwt, err := nkeys.ParseDecoratedJWT(data)
	if err != nil || strings.Count(jwt, ".") != 2 {
		return errors.New("not a NATS credentials file: no user JWT in it")
	}
	kp, err := nkeys.ParseDecoratedUserNKey(data)
	if err != nil {
		return errors.New("not a NATS credentials file: no user NKey seed in it")
	}
	kp.Wipe()
	return nil
}

func checkCA(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !x509.NewCertPool().AppendCertsFromPEM(data) {
		return errors.New("no PEM certificate in it")
	}
	return nil
}

// readSecret returns the first line of a secret file; a file mounted from a
// secret store often ends with a newline that is not part of the secret.
func readSecret(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	defer wipe(data)
	s, _, _ := strings.Cut(string(data), "\n")
	s = strings.TrimSuffix(s, "\r")
	if s == "" {
		return "", errors.New("the first line is empty")
	}
	return s, nil
}

func wipe(b []byte) {
	for i := range b {
		b[i] = 'x'
	}
}

// secretFile is a secret read from a file on every (re)connect; when the file
// cannot be read, the last value read is used, and the server decides.
type secretFile struct {
	path string
	mu   sync.Mutex
	last string
}

func newSecretFile(path string) (*secretFile, error) {
	s, err := readSecret(path)
	if err != nil {
		return nil, err
	}
	return &secretFile{path: path, last: s}, nil
}

func (f *secretFile) get() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, err := readSecret(f.path); err == nil {
		f.last = s
	}
	return f.last
}
