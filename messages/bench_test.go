package messages_test

import (
	"testing"

	"github.com/wallets-worker/wallets-worker/messages"
)

// BenchmarkDecodeCreateBalance measures the per-command decode of the
// worker's hot path: key check, strict body decoding and validation.
func BenchmarkDecodeCreateBalance(b *testing.B) {
	subject := messages.CreateBalanceSubject("wallet-0001")
	body := []byte(`{"walletID":"wallet-0001","name":"savings","priority":2,"expiresAt":"2027-01-01T00:00:00Z"}`)
	keys := []string{"order-2026-11-27-000042"}
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := messages.ParseKey(keys); err != nil {
			b.Fatal(err)
		}
		if _, err := messages.DecodeCreateBalance(subject, body); err != nil {
			b.Fatal(err)
		}
	}
}
