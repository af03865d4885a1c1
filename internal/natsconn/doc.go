// Package natsconn turns NATS connection settings (server URLs, one
// authentication method, TLS) into nats.Options, in one place for every
// program of the project: `wallets-worker run`, `publish create-balance` and
// `dlq`.
//
// It promises that:
//   - Validate reports every problem of a Config at once, before anything
//     connects: two authentication methods, a user without a password, a
//     certificate without its key, a file that cannot be read or parsed;
//   - a Config that validates turns into options (Options) or a connection
//     (Connect) without surprises, and a server that refuses it is reported
//     as an authentication failure (IsAuthFailure) naming the method used;
//   - no password, token or key ever appears in its errors, in Redacted, or
//     when a Config is printed or logged (String, GoString, LogValue).
//
// Secrets can be read from files (PasswordFile, TokenFile, CredsFile,
// NKeyFile), so that they stay out of the process list; files are read again
// on every reconnect, so a rotated secret is picked up without a restart.
//
// Register adds the flags (--nats-creds, --nats-user, ...) to a flag set; the
// command line binds each to its WALLETS_WORKER_* environment variable. The
// package is internal: producer services bring their own *nats.Conn.
package natsconn
