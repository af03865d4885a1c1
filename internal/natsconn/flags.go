package natsconn

import "flag"

// Register adds the authentication and TLS flags of c to fs. It does not add
// --nats-url: its default differs between commands (`run` starts an embedded
// server when it is empty).
func Register(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.CredsFile, "nats-creds", "", "NATS credentials file (user JWT and NKey seed)")
	fs.StringVar(&c.NKeyFile, "nats-nkey", "", "file holding a NATS user NKey seed")
	fs.StringVar(&c.User, "nats-user", "", "NATS user name; with --nats-password or --nats-password-file")
	fs.StringVar(&c.Password, "nats-password", "", "NATS password; prefer --nats-password-file or the environment variable, which stay out of the process list")
	fs.StringVar(&c.PasswordFile, "nats-password-file", "", "file whose first line is the NATS password (read again on every reconnect)")
	fs.StringVar(&c.Token, "nats-token", "", "NATS authentication token; prefer --nats-token-file or the environment variable")
	fs.StringVar(&c.TokenFile, "nats-token-file", "", "file whose first line is the NATS token (read again on every reconnect)")
	fs.StringVar(&c.CAFile, "nats-ca", "", "PEM file of the CA that signed the NATS server's certificate (enables TLS)")
	fs.StringVar(&c.CertFile, "nats-cert", "", "PEM client certificate for NATS mutual TLS; with --nats-key")
	fs.StringVar(&c.KeyFile, "nats-key", "", "PEM private key of --nats-cert")
}

// RegisterInboxPrefix adds --nats-inbox-prefix to fs: under
// deploy/nats/auth.conf each user may read replies under its own prefix
// only.
func RegisterInboxPrefix(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.InboxPrefix, "nats-inbox-prefix", "", "first token of the subjects NATS replies come back on (empty: _INBOX_<user> with --nats-user, which is what deploy/nats/auth.conf gives each user, else _INBOX);\nchecked at connection: a prefix the user may not read is an error at once")
}
