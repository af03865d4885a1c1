package producer

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
)

// KeyFrom derives an idempotency key from an identifier the caller already
// has, such as an order ID, within a namespace that keeps different kinds of
// identifiers apart. The same namespace and id always give the same key, so a
// producer that crashes and publishes again reuses it and the command is
// applied once.
//
// The key is the lowercase hex SHA-256 of: the namespace's length in bytes as
// an 8-byte big-endian integer, the namespace, then id. The length prefix
// keeps ("ab", "c") and ("a", "bc") apart whatever bytes they hold. The key
// is 64 printable ASCII characters, always valid.
func KeyFrom(namespace, id string) string {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(namespace)))
	h.Write(n[:])
	h.Write([]byte(namespace))
	h.Write([]byte(id))
	return hex.EncodeToString(h.Sum(nil))
}

// NewKey returns a random 128-bit key as 32 lowercase hex characters. Use it
// only for a command that has no identifier of its own: a producer that
// retries with a new random key creates a second command.
func NewKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
	return hex.EncodeToString(b[:])
}
