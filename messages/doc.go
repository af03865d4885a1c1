// Package messages is the wire vocabulary of wallets-worker: the CreateBalance
// v1 command, the two outcome events, the dead-letter headers, and the names of
// the streams, subjects and headers they travel on.
//
// It promises that what it decodes is valid: DecodeCreateBalance and ParseKey
// either return a command and key the worker may apply, or a *ValidationError
// that names the offending field and says why. Encoding is the exact inverse.
//
// Every other package of the project imports it (worker, handlers, cmd), and so
// may a producer that publishes commands; it imports none of them. Wire names
// are constants here and are never derived from Go type names.
package messages
