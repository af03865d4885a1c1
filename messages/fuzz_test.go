package messages_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/messages"
)

// FuzzDecodeCreateBalance checks DecodeCreateBalance's promise on any input:
// it never panics, it returns either a *ValidationError or a valid command,
// and a valid command survives Encode and a second decode unchanged. The seed
// corpus runs in every `go test`.
func FuzzDecodeCreateBalance(f *testing.F) {
	seeds := []struct{ subject, body string }{
		{subjectW1, `{"walletID":"w1","name":"savings"}`},
		{subjectW1, `{"walletID": "w1", "name": "savings", "priority": 2, "expiresAt": "2027-01-01T00:00:00Z"}`},
		{subjectW1, `{"walletID":"w1","name":"n","priority":null,"expiresAt":null}`},
		{subjectW1, `{"walletID":"w1","name":"n","expiresAt":"2027-01-01T02:30:00.123456789+02:30"}`},
		{subjectW1, `{"walletID":"w1","name":"n","priority":-9223372036854775808}`},
		{subjectW1, `{"walletID":"w1","name":"n","priority":9223372036854775808}`},
		{subjectW1, `{"walletID":"w1","name":"n","priority":2.5}`},
		{subjectW1, `{"walletID":"w1","name":"n","priority":1e3}`},
		{subjectW1, `{"walletID":"w1","name":"n","priority":"2"}`},
		{subjectW1, `{"walletID":"w1","name":"n","priority":-0}`},
		{subjectW1, `{"walletID":"w1","name":"n","expiresAt":1798761600}`},
		{subjectW1, `{"walletID":"w1","name":"n","expiresAt":"2027-01-01"}`},
		{subjectW1, `{"walletID":"w1","name":"n","expiresAt":"2027-01-01T1:00:00Z"}`},
		{subjectW1, `{"walletID":"w1","name":"n","expiresAt":"2027-01-01T00:00:00,5Z"}`},
		{subjectW1, `{"walletID":"w1","name":"n","expiresAt":"9999-12-31T23:00:00-02:00"}`},
		{subjectW1, `{"walletID":"w1","name":"n","expiresAt":"0000-01-01T00:00:00Z"}`},
		{subjectW1, `{"walletID":1,"name":"n"}`},
		{subjectW1, `{"walletID":"w1","name":null}`},
		{subjectW1, `{"WalletID":"w1","name":"n"}`},
		{subjectW1, `{"walletID":"w1","name":"n","walletID":"w1"}`},
		{subjectW1, `{"walletID":"w1","name":"n","n\u0061me":"m"}`},
		{subjectW1, `{"walletID":"w1","name":"n","":1}`},
		{subjectW1, `{"walletID":"w1","name":"main"}`},
		{subjectW1, `{"walletID":"w1","name":"a:b"}`},
		{subjectW1, `{"walletID":"w1","name":"a.b"}`},
		{subjectW1, `{"walletID":"w1","name":"a\u0000"}`},
		{subjectW1, `{"walletID":"w1"}`},
		{subjectW1, `{"name":"n"}`},
		{subjectW1, `{}`},
		{subjectW1, `[]`},
		{subjectW1, `"w1"`},
		{subjectW1, `42`},
		{subjectW1, `null`},
		{subjectW1, `not json`},
		{subjectW1, ``},
		{subjectW1, `{"walletID":"w1","name":"n"}{}`},
		{subjectW1, `{"walletID":"w1","name":"n"} x`},
		{subjectW1, `{"walletID":"w1","name":"n",}`},
		{subjectW1, `{1:2}`},
		{subjectW1, "{\"walletID\":\"w1\",\"name\":\"n\xff\"}"},
		{subjectW1, "\xef\xbb\xbf{\"walletID\":\"w1\",\"name\":\"n\"}"},
		{subjectW1, padBody(`{"walletID":"w1","name":"n"}`, messages.MaxBodyBytes+1)},
		{"wallets.commands.create-balance.w2", `{"walletID":"w1","name":"n"}`},
		{"wallets.commands.create-balance.w.1", `{"walletID":"w.1","name":"n"}`},
		{"wallets.commands.create-balance.", `{"walletID":"w1","name":"n"}`},
		{"wallets.commands.create-balance.a-b", `{"walletID":"a-b","name":"gift"}`},
		{"", `{"walletID":"w1","name":"n"}`},
	}
	for _, s := range seeds {
		f.Add(s.subject, []byte(s.body))
	}

	f.Fuzz(func(t *testing.T, subject string, body []byte) {
		c, err := messages.DecodeCreateBalance(subject, body)
		if err != nil {
			var ve *messages.ValidationError
			require.ErrorAs(t, err, &ve)
			require.NotEmpty(t, ve.Reason)
			require.True(t, strings.HasPrefix(err.Error(), "invalid command: "))
			return
		}

		// A decoded command is valid and belongs to its subject.
		require.NoError(t, c.Validate())
		require.Equal(t, messages.CreateBalanceSubject(c.WalletID), subject)
		if c.ExpiresAt != nil {
			require.Equal(t, time.UTC, c.ExpiresAt.Location())
		}

		// Whatever the strict decoder accepts, encoding/json reads the same way.
		var loose messages.CreateBalance
		require.NoError(t, json.Unmarshal(body, &loose))
		require.Equal(t, c.WalletID, loose.WalletID)
		require.Equal(t, c.Name, loose.Name)
		require.Equal(t, c.Priority, loose.Priority)
		require.True(t, c.Balance().Equal(loose.Balance()))

		// Encode is the exact inverse of DecodeCreateBalance.
		encoded, err := c.Encode()
		require.NoError(t, err)
		again, err := messages.DecodeCreateBalance(subject, encoded)
		require.NoError(t, err)
		require.Equal(t, c, again)
		reencoded, err := again.Encode()
		require.NoError(t, err)
		require.Equal(t, string(encoded), string(reencoded))
	})
}
