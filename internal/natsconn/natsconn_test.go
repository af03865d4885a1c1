package natsconn_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/natsconn"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
)

// Secrets of the tests: none may appear in an error.
const (
	goodPassword = "pw-right-7f3a9c"
	badPassword  = "pw-wrong-51d0e2"
	goodToken    = "tok-right-c0ffee42"
	badToken     = "tok-wrong-deadbeef"
)

// startServer runs nats-server in process with opts (auth, TLS) on a free
// port until the test ends, and returns its client URL.
func startServer(t *testing.T, opts *server.Options) string {
	t.Helper()
	return testutil.NATSServer(t, opts).ClientURL()
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

// requirePublishes checks that nc can publish and receive on its server.
func requirePublishes(t *testing.T, nc *nats.Conn) {
	t.Helper()
	sub, err := nc.SubscribeSync("natsconn.test")
	require.NoError(t, err)
	require.NoError(t, nc.Publish("natsconn.test", []byte("hello")))
	m, err := sub.NextMsg(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, "hello", string(m.Data))
}

// requireRefused checks that c fails to connect at once, as an
// authentication failure, and that no secret is in the error.
func requireRefused(t *testing.T, c natsconn.Config, secrets ...string) {
	t.Helper()
	requireRefusedAs(t, "authentication failed", c, secrets...)
}

func requireRefusedAs(t *testing.T, why string, c natsconn.Config, secrets ...string) {
	t.Helper()
	start := time.Now()
	nc, err := natsconn.Connect(c, nats.Timeout(5*time.Second))
	if nc != nil {
		nc.Close()
	}
	require.Error(t, err)
	t.Logf("refused: %v", err)
	require.Less(t, time.Since(start), 3*time.Second, "a refusal is not a timeout: %v", err)
	require.True(t, natsconn.IsAuthFailure(err), "%v", err)
	require.Contains(t, err.Error(), why)
	for _, s := range append(secrets, goodPassword, badPassword, goodToken, badToken) {
		require.NotContains(t, err.Error(), s)
	}
}

// newCredsFile writes a credentials file: a user JWT signed by an account,
// and the user's seed.
func newCredsFile(t *testing.T) string {
	t.Helper()
	account, err := nkeys.CreateAccount()
	require.NoError(t, err)
	user := newUserNKey(t)
	token, err := jwt.NewUserClaims(user.pub).Encode(account)
	require.NoError(t, err)
	creds, err := jwt.FormatUserConfig(token, []byte(user.seed))
	require.NoError(t, err)
	return writeFile(t, "user.creds", string(creds))
}

type keys struct{ seed, pub string }

func newUserNKey(t *testing.T) keys {
	t.Helper()
	kp, err := nkeys.CreateUser()
	require.NoError(t, err)
	seed, err := kp.Seed()
	require.NoError(t, err)
	pub, err := kp.PublicKey()
	require.NoError(t, err)
	return keys{seed: string(seed), pub: pub}
}

func TestConnect(t *testing.T) {
	t.Parallel()

	t.Run("user and password", func(t *testing.T) {
		t.Parallel()
		url := startServer(t, &server.Options{Username: "alice", Password: goodPassword})

		for name, c := range map[string]natsconn.Config{
			"flag":         {URL: url, User: "alice", Password: goodPassword},
			"file":         {URL: url, User: "alice", PasswordFile: writeFile(t, "pw", goodPassword+"\n")},
			"crlf in file": {URL: url, User: "alice", PasswordFile: writeFile(t, "pw", goodPassword+"\r\n")},
		} {
			nc, err := natsconn.Connect(c)
			require.NoError(t, err, name)
			requirePublishes(t, nc)
			nc.Close()
		}
		requireRefused(t, natsconn.Config{URL: url, User: "alice", Password: badPassword})
		requireRefused(t, natsconn.Config{URL: url, User: "alice", PasswordFile: writeFile(t, "pw", badPassword)})
		requireRefused(t, natsconn.Config{URL: url, User: "mallory", Password: goodPassword})
		requireRefused(t, natsconn.Config{URL: strings.Replace(url, "nats://", "nats://alice:"+badPassword+"@", 1)})
		requireRefused(t, natsconn.Config{URL: url}) // none
	})

	t.Run("token", func(t *testing.T) {
		t.Parallel()
		url := startServer(t, &server.Options{Authorization: goodToken})

		for _, c := range []natsconn.Config{
			{URL: url, Token: goodToken},
			{URL: url, TokenFile: writeFile(t, "token", goodToken+"\n")},
		} {
			nc, err := natsconn.Connect(c)
			require.NoError(t, err)
			requirePublishes(t, nc)
			nc.Close()
		}
		requireRefused(t, natsconn.Config{URL: url, Token: badToken})
		requireRefused(t, natsconn.Config{URL: url, TokenFile: writeFile(t, "token", badToken)})
		requireRefused(t, natsconn.Config{URL: strings.Replace(url, "nats://", "nats://"+badToken+"@", 1)})
	})

	t.Run("nkey", func(t *testing.T) {
		t.Parallel()
		user, stranger := newUserNKey(t), newUserNKey(t)
		url := startServer(t, &server.Options{Nkeys: []*server.NkeyUser{{Nkey: user.pub}}})

		nc, err := natsconn.Connect(natsconn.Config{URL: url, NKeyFile: writeFile(t, "user.nk", user.seed)})
		require.NoError(t, err)
		requirePublishes(t, nc)
		nc.Close()
		requireRefused(t, natsconn.Config{URL: url, NKeyFile: writeFile(t, "stranger.nk", stranger.seed)}, stranger.seed, user.seed)
	})

	t.Run("TLS", func(t *testing.T) {
		t.Parallel()
		ca, other := newCA(t, "wallets test CA"), newCA(t, "another CA")
		srvCert := ca.issue(t, "nats-server", true)
		url := startServer(t, &server.Options{
			TLS: true, TLSVerify: true, TLSTimeout: 2,
			TLSConfig: &tls.Config{
				Certificates: []tls.Certificate{srvCert.pair(t)},
				ClientCAs:    ca.pool(),
				ClientAuth:   tls.RequireAndVerifyClientCert,
				MinVersion:   tls.VersionTLS12,
			},
		})
		client, stranger := ca.issue(t, "wallets-worker", false), other.issue(t, "wallets-worker", false)

		nc, err := natsconn.Connect(natsconn.Config{URL: url, CAFile: ca.file, CertFile: client.certFile, KeyFile: client.keyFile})
		require.NoError(t, err)
		requirePublishes(t, nc)
		nc.Close()

		keyPEM, err := os.ReadFile(client.keyFile)
		require.NoError(t, err)
		secret := string(keyPEM[40:80]) // from inside the key's base64
		// The server is not trusted.
		requireRefusedAs(t, "TLS handshake failed", natsconn.Config{URL: url, CAFile: other.file, CertFile: client.certFile, KeyFile: client.keyFile}, secret)
		// The client has no certificate, or one the server does not trust.
		requireRefusedAs(t, "TLS handshake failed", natsconn.Config{URL: url, CAFile: ca.file}, secret)
		requireRefusedAs(t, "TLS handshake failed", natsconn.Config{URL: url, CAFile: ca.file, CertFile: stranger.certFile, KeyFile: stranger.keyFile}, secret)
	})
}

func TestUnreachableIsNotAnAuthFailure(t *testing.T) {
	t.Parallel()
	addr := testutil.FreeAddr(t) // nothing listens there
	_, err := natsconn.Connect(natsconn.Config{URL: "nats://alice:" + goodPassword + "@" + addr})
	require.Error(t, err)
	require.False(t, natsconn.IsAuthFailure(err), "%v", err)
	require.NotContains(t, err.Error(), goodPassword)
	require.Contains(t, err.Error(), "nats://REDACTED@"+addr)
}

func TestValidate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	empty := writeFile(t, "empty", "\n")
	garbage := writeFile(t, "garbage", "not a PEM, not a seed, not a JWT")
	user := newUserNKey(t)
	seed := writeFile(t, "user.nk", user.seed)
	ca := newCA(t, "CA")
	cert := ca.issue(t, "client", false)

	t.Run("valid", func(t *testing.T) {
		t.Parallel()
		for _, c := range []natsconn.Config{
			{},
			{URL: "nats://a:4222,nats://b:4222"},
			{User: "u", Password: "p"},
			{User: "u", PasswordFile: writeFile(t, "pw", "p")},
			{Token: "t"},
			{NKeyFile: seed},
			{CredsFile: newCredsFile(t)},
			{URL: "nats://u:p@h:4222", CAFile: ca.file},
			{CAFile: ca.file, CertFile: cert.certFile, KeyFile: cert.keyFile, Token: "t"},
			{InboxPrefix: "_INBOX_wallets_producer"},
			{InboxPrefix: "_INBOX.wallets.producer"},
		} {
			require.NoError(t, c.Validate(), "%v", c)
			_, err := c.Options()
			require.NoError(t, err, "%v", c)
		}
	})

	tests := []struct {
		name string
		c    natsconn.Config
		want []string // every problem is reported
	}{
		{"two methods", natsconn.Config{User: "u", Password: goodPassword, Token: goodToken, NKeyFile: seed},
			[]string{"--nats-nkey and --nats-user/--nats-password and --nats-token are different methods"}},
		{"credentials in the URL and a token", natsconn.Config{URL: "nats://u:" + goodPassword + "@h", Token: goodToken},
			[]string{"credentials in --nats-url and --nats-token"}},
		{"user without password", natsconn.Config{User: "u"}, []string{"--nats-user needs --nats-password"}},
		{"password without user", natsconn.Config{Password: goodPassword}, []string{"needs --nats-user"}},
		{"password twice", natsconn.Config{User: "u", Password: goodPassword, PasswordFile: empty},
			[]string{"not both", "first line is empty"}},
		{"token twice", natsconn.Config{Token: goodToken, TokenFile: missing}, []string{"not both", "no such file"}},
		{"missing files", natsconn.Config{CredsFile: missing, CAFile: missing, CertFile: missing, KeyFile: missing},
			[]string{"--nats-creds: open " + missing, "--nats-ca: open " + missing, "--nats-cert/--nats-key: open " + missing}},
		{"garbage files", natsconn.Config{CredsFile: garbage, CAFile: garbage}, []string{"no user JWT", "no PEM certificate"}},
		{"not a seed", natsconn.Config{NKeyFile: garbage}, []string{"--nats-nkey " + garbage}},
		{"cert without key", natsconn.Config{CertFile: cert.certFile}, []string{"--nats-cert and --nats-key go together"}},
		{"inbox prefix with a wildcard", natsconn.Config{InboxPrefix: "_INBOX.>"}, []string{`--nats-inbox-prefix "_INBOX.>"`}},
		{"inbox prefix with an empty token", natsconn.Config{InboxPrefix: "_INBOX..x"}, []string{"--nats-inbox-prefix"}},
		{"inbox prefix ending with a dot", natsconn.Config{InboxPrefix: "_INBOX_x."}, []string{"--nats-inbox-prefix"}},
		{"key of another cert", natsconn.Config{CertFile: cert.certFile, KeyFile: ca.issue(t, "x", false).keyFile}, []string{"private key does not match"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.c.Validate()
			require.Error(t, err)
			t.Logf("%v", err)
			for _, w := range tt.want {
				require.Contains(t, err.Error(), w)
			}
			for _, s := range []string{goodPassword, goodToken, user.seed} {
				require.NotContains(t, err.Error(), s)
			}
			_, err = tt.c.Options()
			require.Error(t, err)
			_, err = natsconn.Connect(tt.c)
			require.Error(t, err)
		})
	}
}

func TestRedacted(t *testing.T) {
	t.Parallel()
	c := natsconn.Config{
		URL:  "nats://alice:" + goodPassword + "@h1:4222,nats://" + goodToken + "@h2:4222,nats://h3:4222",
		User: "alice", Password: goodPassword, Token: goodToken, CAFile: "/etc/nats/ca.pem",
	}
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("nats", "config", c)
	for _, s := range []string{c.Redacted(), c.String(), fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), logged.String()} {
		require.NotContains(t, s, goodPassword)
		require.NotContains(t, s, goodToken)
		require.Contains(t, s, "nats://REDACTED@h1:4222,nats://REDACTED@h2:4222,nats://h3:4222")
		require.Contains(t, s, "/etc/nats/ca.pem")
		require.Contains(t, s, "user=alice")
	}
	require.Equal(t, "nats://h:4222", natsconn.RedactURL("nats://h:4222"))
	require.Equal(t, "REDACTED@h:4222", natsconn.RedactURL("u:p@h:4222"))
}

func TestRegister(t *testing.T) {
	t.Parallel()
	var c natsconn.Config
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	natsconn.Register(fs, &c)
	args := []string{"--nats-creds", "c", "--nats-nkey", "n", "--nats-user", "u", "--nats-password", "p",
		"--nats-password-file", "pf", "--nats-token", "t", "--nats-token-file", "tf",
		"--nats-ca", "ca", "--nats-cert", "cert", "--nats-key", "key"}
	require.NoError(t, fs.Parse(args))
	require.Equal(t, natsconn.Config{CredsFile: "c", NKeyFile: "n", User: "u", Password: "p", PasswordFile: "pf",
		Token: "t", TokenFile: "tf", CAFile: "ca", CertFile: "cert", KeyFile: "key"}, c)
	require.Nil(t, fs.Lookup("nats-url"), "each command sets its own --nats-url default")
	require.Nil(t, fs.Lookup("nats-inbox-prefix"), "only the commands that need it have --nats-inbox-prefix")

	natsconn.RegisterInboxPrefix(fs, &c)
	require.NoError(t, fs.Parse([]string{"--nats-inbox-prefix", "_INBOX_p"}))
	require.Equal(t, "_INBOX_p", c.InboxPrefix)
}

// TestInboxPrefix: replies come back under the configured prefix, so that a
// user allowed to subscribe to its own prefix only still gets answers.
func TestInboxPrefix(t *testing.T) {
	t.Parallel()
	url := startServer(t, &server.Options{})
	nc, err := natsconn.Connect(natsconn.Config{URL: url, InboxPrefix: "_INBOX_mine"})
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	require.True(t, strings.HasPrefix(nc.NewRespInbox(), "_INBOX_mine."), nc.NewRespInbox())
	require.True(t, strings.HasPrefix(nats.NewInbox(), "_INBOX."), "the default is untouched")
}

// ca is a test certificate authority (ECDSA P-256), its certificate in file.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
}

func newCA(t *testing.T, name string) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &ca{cert: cert, key: key, file: writeFile(t, "ca.pem", pemOf("CERTIFICATE", der))}
}

func (c *ca) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

type issued struct{ certFile, keyFile string }

// issue signs a certificate for a server on 127.0.0.1, or for a client.
func (c *ca) issue(t *testing.T, name string, isServer bool) issued {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if isServer {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	require.NoError(t, err)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return issued{
		certFile: writeFile(t, name+".pem", pemOf("CERTIFICATE", der)),
		keyFile:  writeFile(t, name+"-key.pem", pemOf("PRIVATE KEY", pkcs8)),
	}
}

func (i issued) pair(t *testing.T) tls.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(i.certFile, i.keyFile)
	require.NoError(t, err)
	return pair
}

func pemOf(typ string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

func TestInboxFollowsTheUser(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cfg  natsconn.Config
		want string
	}{
		{natsconn.Config{}, ""},
		{natsconn.Config{User: "wallets-worker"}, "_INBOX_wallets_worker"},
		{natsconn.Config{User: "team.a-1"}, "_INBOX_team_a_1"},
		{natsconn.Config{User: "wallets-producer", InboxPrefix: "_INBOX"}, "_INBOX"},
		{natsconn.Config{CredsFile: "x.creds"}, ""},
	} {
		if got := c.cfg.Inbox(); got != c.want {
			t.Errorf("%+v: Inbox() = %q, want %q", c.cfg, got, c.want)
		}
	}
}
