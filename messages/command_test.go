package messages_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/messages"
)

const subjectW1 = "wallets.commands.create-balance.w1"

func ptrTime(t *testing.T, s string) *time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	require.NoError(t, err)
	v = v.UTC()
	return &v
}

func requireValidationField(t *testing.T, err error, field string) {
	t.Helper()
	require.Error(t, err)
	var ve *messages.ValidationError
	require.ErrorAs(t, err, &ve)
	require.Equal(t, field, ve.Field, "error: %v", err)
	require.True(t, messages.IsValidationError(err))
	require.NotEmpty(t, ve.Reason)
}

func TestDecodeCreateBalance_Valid(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		subject string
		body    string
		want    messages.CreateBalance
	}{
		{
			name:    "minimal",
			subject: subjectW1,
			body:    `{"walletID":"w1","name":"savings"}`,
			want:    messages.CreateBalance{WalletID: "w1", Name: "savings"},
		},
		{
			name:    "full",
			subject: subjectW1,
			body:    `{"walletID": "w1", "name": "savings", "priority": 2, "expiresAt": "2027-01-01T00:00:00Z"}`,
			want: messages.CreateBalance{
				WalletID: "w1", Name: "savings", Priority: 2,
				ExpiresAt: ptrTime(t, "2027-01-01T00:00:00Z"),
			},
		},
		{
			name:    "fields in any order, surrounding whitespace",
			subject: subjectW1,
			body:    "\n\t {\"expiresAt\":null, \"priority\":-7,\"name\":\"a_b-C9\",\"walletID\":\"w1\"} \r\n",
			want:    messages.CreateBalance{WalletID: "w1", Name: "a_b-C9", Priority: -7},
		},
		{
			name:    "null priority is zero",
			subject: subjectW1,
			body:    `{"walletID":"w1","name":"n","priority":null}`,
			want:    messages.CreateBalance{WalletID: "w1", Name: "n"},
		},
		{
			name:    "null expiresAt never expires",
			subject: subjectW1,
			body:    `{"walletID":"w1","name":"n","expiresAt":null}`,
			want:    messages.CreateBalance{WalletID: "w1", Name: "n"},
		},
		{
			name:    "priority int64 bounds",
			subject: subjectW1,
			body:    `{"walletID":"w1","name":"n","priority":-9223372036854775808}`,
			want:    messages.CreateBalance{WalletID: "w1", Name: "n", Priority: -1 << 63},
		},
		{
			name:    "priority max int64",
			subject: subjectW1,
			body:    `{"walletID":"w1","name":"n","priority":9223372036854775807}`,
			want:    messages.CreateBalance{WalletID: "w1", Name: "n", Priority: 1<<63 - 1},
		},
		{
			name:    "expiresAt with offset is normalised to UTC",
			subject: subjectW1,
			body:    `{"walletID":"w1","name":"n","expiresAt":"2027-01-01T02:30:00.123456789+02:30"}`,
			want: messages.CreateBalance{
				WalletID: "w1", Name: "n",
				ExpiresAt: ptrTime(t, "2027-01-01T00:00:00.123456789Z"),
			},
		},
		{
			name:    "dashed wallet ID",
			subject: "wallets.commands.create-balance.0b6f2d6e-4e2a-4f3a",
			body:    `{"walletID":"0b6f2d6e-4e2a-4f3a","name":"gift"}`,
			want:    messages.CreateBalance{WalletID: "0b6f2d6e-4e2a-4f3a", Name: "gift"},
		},
		{
			name:    "name differing from main only by case",
			subject: subjectW1,
			body:    `{"walletID":"w1","name":"Main"}`,
			want:    messages.CreateBalance{WalletID: "w1", Name: "Main"},
		},
		{
			name:    "body of exactly MaxBodyBytes",
			subject: subjectW1,
			body:    padBody(`{"walletID":"w1","name":"n"}`, messages.MaxBodyBytes),
			want:    messages.CreateBalance{WalletID: "w1", Name: "n"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			got, err := messages.DecodeCreateBalance(tt.subject, []byte(tt.body))
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			if got.ExpiresAt != nil {
				require.Equal(t, time.UTC, got.ExpiresAt.Location())
			}
		})
	}
}

// padBody appends spaces to body up to n bytes.
func padBody(body string, n int) string {
	return body + strings.Repeat(" ", n-len(body))
}

func TestDecodeCreateBalance_Invalid(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		subject string
		body    string
		field   string
	}{
		// The body as a whole.
		{"not JSON", subjectW1, `walletID=w1`, messages.FieldBody},
		{"empty body", subjectW1, ``, messages.FieldBody},
		{"only whitespace", subjectW1, " \n", messages.FieldBody},
		{"truncated object", subjectW1, `{"walletID":"w1","name":"n"`, messages.FieldBody},
		{"truncated after key", subjectW1, `{"walletID"`, messages.FieldBody},
		{"trailing comma", subjectW1, `{"walletID":"w1","name":"n",}`, messages.FieldBody},
		{"non-string key", subjectW1, `{1:"w1"}`, messages.FieldBody},
		{"top-level array", subjectW1, `[{"walletID":"w1","name":"n"}]`, messages.FieldBody},
		{"top-level string", subjectW1, `"w1"`, messages.FieldBody},
		{"top-level number", subjectW1, `42`, messages.FieldBody},
		{"top-level null", subjectW1, `null`, messages.FieldBody},
		{"trailing object", subjectW1, `{"walletID":"w1","name":"n"}{}`, messages.FieldBody},
		{"trailing garbage", subjectW1, `{"walletID":"w1","name":"n"} x`, messages.FieldBody},
		{"trailing number", subjectW1, `{"walletID":"w1","name":"n"}0`, messages.FieldBody},
		{"trailing form feed", subjectW1, "{\"walletID\":\"w1\",\"name\":\"n\"}\f", messages.FieldBody},
		{"invalid UTF-8 in a value", subjectW1, "{\"walletID\":\"w1\",\"name\":\"n\xff\"}", messages.FieldBody},
		{"invalid UTF-8 after the object", subjectW1, "{\"walletID\":\"w1\",\"name\":\"n\"}\xc3", messages.FieldBody},
		{"byte order mark", subjectW1, "\xef\xbb\xbf{\"walletID\":\"w1\",\"name\":\"n\"}", messages.FieldBody},
		{"over 64 KiB", subjectW1, padBody(`{"walletID":"w1","name":"n"}`, messages.MaxBodyBytes+1), messages.FieldBody},

		// Field names.
		{"unknown field", subjectW1, `{"walletID":"w1","name":"n","metadata":{}}`, "metadata"},
		{"field name in another case", subjectW1, `{"WalletID":"w1","name":"n"}`, "WalletID"},
		{"field name in upper case", subjectW1, `{"walletID":"w1","NAME":"n"}`, "NAME"},
		{"duplicate field", subjectW1, `{"walletID":"w1","name":"n","walletID":"w1"}`, messages.FieldWalletID},
		{"duplicate field with same null value", subjectW1, `{"walletID":"w1","name":"n","priority":null,"priority":null}`, messages.FieldPriority},
		{"duplicate field spelt with an escape", subjectW1, `{"walletID":"w1","name":"n","n\u0061me":"m"}`, messages.FieldName},

		// Field types.
		{"walletID number", subjectW1, `{"walletID":1,"name":"n"}`, messages.FieldWalletID},
		{"walletID null", subjectW1, `{"walletID":null,"name":"n"}`, messages.FieldWalletID},
		{"walletID object", subjectW1, `{"walletID":{},"name":"n"}`, messages.FieldWalletID},
		{"name null", subjectW1, `{"walletID":"w1","name":null}`, messages.FieldName},
		{"name array", subjectW1, `{"walletID":"w1","name":["n"]}`, messages.FieldName},
		{"name bool", subjectW1, `{"walletID":"w1","name":true}`, messages.FieldName},
		{"priority string", subjectW1, `{"walletID":"w1","name":"n","priority":"2"}`, messages.FieldPriority},
		{"priority fraction", subjectW1, `{"walletID":"w1","name":"n","priority":2.5}`, messages.FieldPriority},
		{"priority integral fraction", subjectW1, `{"walletID":"w1","name":"n","priority":2.0}`, messages.FieldPriority},
		{"priority exponent", subjectW1, `{"walletID":"w1","name":"n","priority":1e3}`, messages.FieldPriority},
		{"priority beyond int64", subjectW1, `{"walletID":"w1","name":"n","priority":9223372036854775808}`, messages.FieldPriority},
		{"priority below int64", subjectW1, `{"walletID":"w1","name":"n","priority":-9223372036854775809}`, messages.FieldPriority},
		{"priority bool", subjectW1, `{"walletID":"w1","name":"n","priority":false}`, messages.FieldPriority},
		{"priority object", subjectW1, `{"walletID":"w1","name":"n","priority":{}}`, messages.FieldPriority},
		{"expiresAt number", subjectW1, `{"walletID":"w1","name":"n","expiresAt":1798761600}`, messages.FieldExpiresAt},
		{"expiresAt date only", subjectW1, `{"walletID":"w1","name":"n","expiresAt":"2027-01-01"}`, messages.FieldExpiresAt},
		{"expiresAt without offset", subjectW1, `{"walletID":"w1","name":"n","expiresAt":"2027-01-01T00:00:00"}`, messages.FieldExpiresAt},
		{"expiresAt with a space", subjectW1, `{"walletID":"w1","name":"n","expiresAt":"2027-01-01 00:00:00Z"}`, messages.FieldExpiresAt},
		{"expiresAt one-digit hour", subjectW1, `{"walletID":"w1","name":"n","expiresAt":"2027-01-01T1:00:00Z"}`, messages.FieldExpiresAt},
		{"expiresAt comma fraction", subjectW1, `{"walletID":"w1","name":"n","expiresAt":"2027-01-01T00:00:00,5Z"}`, messages.FieldExpiresAt},
		{"expiresAt offset hour 24", subjectW1, `{"walletID":"w1","name":"n","expiresAt":"2027-01-01T00:00:00+24:00"}`, messages.FieldExpiresAt},
		{"expiresAt offset minute 60", subjectW1, `{"walletID":"w1","name":"n","expiresAt":"2027-01-01T00:00:00+01:60"}`, messages.FieldExpiresAt},
		{"expiresAt month 13", subjectW1, `{"walletID":"w1","name":"n","expiresAt":"2027-13-01T00:00:00Z"}`, messages.FieldExpiresAt},
		{"expiresAt empty", subjectW1, `{"walletID":"w1","name":"n","expiresAt":""}`, messages.FieldExpiresAt},
		{"expiresAt past year 9999 in UTC", subjectW1, `{"walletID":"w1","name":"n","expiresAt":"9999-12-31T23:00:00-02:00"}`, messages.FieldExpiresAt},
		{"expiresAt before year 0 in UTC", subjectW1, `{"walletID":"w1","name":"n","expiresAt":"0000-01-01T00:00:00+01:00"}`, messages.FieldExpiresAt},

		// Field values.
		{"missing walletID", subjectW1, `{"name":"n"}`, messages.FieldWalletID},
		{"empty walletID", subjectW1, `{"walletID":"","name":"n"}`, messages.FieldWalletID},
		{"missing name", subjectW1, `{"walletID":"w1"}`, messages.FieldName},
		{"empty object", subjectW1, `{}`, messages.FieldWalletID},
		{"empty name", subjectW1, `{"walletID":"w1","name":""}`, messages.FieldName},
		{"name main", subjectW1, `{"walletID":"w1","name":"main"}`, messages.FieldName},
		{"name with colon", subjectW1, `{"walletID":"w1","name":"a:b"}`, messages.FieldName},
		{"name with dot", subjectW1, `{"walletID":"w1","name":"a.b"}`, messages.FieldName},
		{"name with space", subjectW1, `{"walletID":"w1","name":"a b"}`, messages.FieldName},
		{"name non-ASCII", subjectW1, `{"walletID":"w1","name":"épargne"}`, messages.FieldName},
		{"name with escaped NUL", subjectW1, `{"walletID":"w1","name":"a\u0000"}`, messages.FieldName},
		{"walletID with dot", subjectW1, `{"walletID":"w.1","name":"n"}`, messages.FieldWalletID},
		{"walletID with colon", subjectW1, `{"walletID":"w:1","name":"n"}`, messages.FieldWalletID},
		{"walletID wildcard", "wallets.commands.create-balance.*", `{"walletID":"*","name":"n"}`, messages.FieldWalletID},

		// Subject.
		{"subject wallet differs from body", "wallets.commands.create-balance.w2", `{"walletID":"w1","name":"n"}`, messages.FieldWalletID},
		{"subject wallet differs by case", "wallets.commands.create-balance.W1", `{"walletID":"w1","name":"n"}`, messages.FieldWalletID},
		{"subject wallet with a dot", "wallets.commands.create-balance.w.1", `{"walletID":"w.1","name":"n"}`, messages.FieldSubject},
		{"subject without wallet", "wallets.commands.create-balance.", `{"walletID":"w1","name":"n"}`, messages.FieldSubject},
		{"subject is the prefix without dot", "wallets.commands.create-balance", `{"walletID":"w1","name":"n"}`, messages.FieldSubject},
		{"subject empty", "", `{"walletID":"w1","name":"n"}`, messages.FieldSubject},
		{"subject of another command", "wallets.commands.create-wallet.w1", `{"walletID":"w1","name":"n"}`, messages.FieldSubject},
		{"subject of an event", "wallets.events.balance-created.w1", `{"walletID":"w1","name":"n"}`, messages.FieldSubject},
		{"subject checked before body", "nope", `not json`, messages.FieldSubject},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			_, err := messages.DecodeCreateBalance(tt.subject, []byte(tt.body))
			requireValidationField(t, err, tt.field)
			require.True(t, strings.HasPrefix(err.Error(), "invalid command: "+tt.field+": "), err.Error())
		})
	}
}

func TestDecodeCreateBalance_LongValuesAreTruncatedInErrors(t *testing.T) {
	t.Parallel()

	long := strings.Repeat("é", 1000)
	body := `{"walletID":"w1","name":"n","` + long + `":1}`
	_, err := messages.DecodeCreateBalance(subjectW1, []byte(body))
	var ve *messages.ValidationError
	require.ErrorAs(t, err, &ve)
	require.Less(t, len(ve.Error()), 200)
	require.True(t, strings.HasSuffix(ve.Field, "…"))
	require.True(t, strings.HasPrefix(long, strings.TrimSuffix(ve.Field, "…")), "cut inside a rune")
}

func TestParseKey(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		values  []string
		wantKey string
		wantErr bool
	}{
		{"missing header", nil, "", true},
		{"header without values", []string{}, "", true},
		{"empty key", []string{""}, "", true},
		{"two values", []string{"k1", "k2"}, "", true},
		{"duplicate values", []string{"k1", "k1"}, "", true},
		{"one byte", []string{"k"}, "k", false},
		{"printable ASCII", []string{"order-42/line 3:~!"}, "order-42/line 3:~!", false},
		{"200 bytes", []string{strings.Repeat("k", 200)}, strings.Repeat("k", 200), false},
		{"201 bytes", []string{strings.Repeat("k", 201)}, "", true},
		{"NUL", []string{"a\x00b"}, "", true},
		{"newline", []string{"a\nb"}, "", true},
		{"tab", []string{"a\tb"}, "", true},
		{"DEL", []string{"a\x7fb"}, "", true},
		{"non-ASCII", []string{"clé"}, "", true},
		{"invalid UTF-8", []string{"a\xffb"}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			key, err := messages.ParseKey(tt.values)
			if tt.wantErr {
				requireValidationField(t, err, messages.FieldKey)
				require.Equal(t, "Nats-Msg-Id", messages.FieldKey)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantKey, key)
			require.NoError(t, messages.ValidateKey(key))
		})
	}
}

func TestValidateKey(t *testing.T) {
	t.Parallel()

	for _, key := range []string{"", strings.Repeat("x", messages.MaxKeyBytes+1), "\x00", "a\n", "\x7f", "\x1f", "ü", "\x80", " ", " k", "k ", "  "} {
		requireValidationField(t, messages.ValidateKey(key), messages.FieldKey)
	}
	for _, key := range []string{"~", "a b", strings.Repeat("x", messages.MaxKeyBytes), "0b6f2d6e-4e2a-4f3a-9f0a-2b9c1d8e7a31"} {
		require.NoError(t, messages.ValidateKey(key), "%q", key)
	}
}

func TestCreateBalance_EncodeRoundTrip(t *testing.T) {
	t.Parallel()

	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		paris = time.FixedZone("CET", 3600)
	}
	tests := []struct {
		name string
		cmd  messages.CreateBalance
		want string
	}{
		{
			name: "minimal",
			cmd:  messages.CreateBalance{WalletID: "w1", Name: "n"},
			want: `{"walletID":"w1","name":"n","priority":0,"expiresAt":null}`,
		},
		{
			name: "full, local time written in UTC",
			cmd: func() messages.CreateBalance {
				at := time.Date(2027, 1, 1, 1, 0, 0, 500, paris)
				return messages.CreateBalance{WalletID: "w-1", Name: "gift_2", Priority: -3, ExpiresAt: &at}
			}(),
			want: `{"walletID":"w-1","name":"gift_2","priority":-3,"expiresAt":"2027-01-01T00:00:00.0000005Z"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			body, err := tt.cmd.Encode()
			require.NoError(t, err)
			require.JSONEq(t, tt.want, string(body))

			got, err := messages.DecodeCreateBalance(messages.CreateBalanceSubject(tt.cmd.WalletID), body)
			require.NoError(t, err)
			require.Equal(t, tt.cmd.WalletID, got.WalletID)
			require.Equal(t, tt.cmd.Name, got.Name)
			require.Equal(t, tt.cmd.Priority, got.Priority)
			require.True(t, tt.cmd.Balance().Equal(got.Balance()))
		})
	}
}

func TestCreateBalance_EncodeRefusesInvalid(t *testing.T) {
	t.Parallel()

	late := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		cmd   messages.CreateBalance
		field string
	}{
		{"no wallet", messages.CreateBalance{Name: "n"}, messages.FieldWalletID},
		{"no name", messages.CreateBalance{WalletID: "w1"}, messages.FieldName},
		{"main", messages.CreateBalance{WalletID: "w1", Name: "main"}, messages.FieldName},
		{"year 10000", messages.CreateBalance{WalletID: "w1", Name: "n", ExpiresAt: &late}, messages.FieldExpiresAt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			body, err := tt.cmd.Encode()
			require.Nil(t, body)
			requireValidationField(t, err, tt.field)
		})
	}
}

func TestCreateBalance_Balance(t *testing.T) {
	t.Parallel()

	at := time.Date(2027, 1, 1, 3, 0, 0, 0, time.FixedZone("X", 3*3600))
	cmd := messages.CreateBalance{WalletID: "w1", Name: "n", Priority: 4, ExpiresAt: &at}
	b := cmd.Balance()
	require.Equal(t, "n", b.Name)
	require.Equal(t, int64(4), b.Priority)
	require.Equal(t, time.UTC, b.ExpiresAt.Location())
	require.True(t, b.ExpiresAt.Equal(at))
	require.NotSame(t, cmd.ExpiresAt, b.ExpiresAt, "Balance must not alias the command's time")

	require.Nil(t, messages.CreateBalance{WalletID: "w1", Name: "n"}.Balance().ExpiresAt)
}

func TestBalance_Equal(t *testing.T) {
	t.Parallel()

	at := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	sameInstant := at.In(time.FixedZone("X", -5*3600))
	later := at.Add(time.Nanosecond)
	microLater := at.Add(time.Microsecond)
	base := messages.Balance{Name: "n", Priority: 1, ExpiresAt: &at}

	tests := []struct {
		name  string
		other messages.Balance
		want  bool
	}{
		{"identical", messages.Balance{Name: "n", Priority: 1, ExpiresAt: &at}, true},
		{"same instant in another zone", messages.Balance{Name: "n", Priority: 1, ExpiresAt: &sameInstant}, true},
		{"other name", messages.Balance{Name: "m", Priority: 1, ExpiresAt: &at}, false},
		{"other priority", messages.Balance{Name: "n", Priority: 2, ExpiresAt: &at}, false},
		{"one nanosecond later: the same to the microsecond, as the wallets service stores it", messages.Balance{Name: "n", Priority: 1, ExpiresAt: &later}, true},
		{"one microsecond later", messages.Balance{Name: "n", Priority: 1, ExpiresAt: &microLater}, false},
		{"never expires", messages.Balance{Name: "n", Priority: 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			require.Equal(t, tt.want, base.Equal(tt.other))
			require.Equal(t, tt.want, tt.other.Equal(base), "Equal must be symmetric")
		})
	}

	t.Run("both never expire", func(t *testing.T) {
		t.Parallel()

		require.True(t, messages.Balance{Name: "n"}.Equal(messages.Balance{Name: "n"}))
	})
}

// walletID and name are bounded: they end up in subjects and KV keys, and a
// protocol line over 4 KiB makes NATS close the connection.
func TestTokensAreBounded(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", messages.MaxTokenBytes+1)
	for _, body := range []string{
		`{"walletID":"` + long + `","name":"x"}`,
		`{"walletID":"w1","name":"` + long + `"}`,
	} {
		wallet := "w1"
		if strings.Contains(body, `"walletID":"a`) {
			wallet = long
		}
		_, err := messages.DecodeCreateBalance(messages.CreateBalanceSubject(wallet), []byte(body))
		var v *messages.ValidationError
		require.ErrorAs(t, err, &v)
		require.Contains(t, v.Reason, "at most 128")
	}
	ok := strings.Repeat("a", messages.MaxTokenBytes)
	_, err := messages.DecodeCreateBalance(messages.CreateBalanceSubject(ok), []byte(`{"walletID":"`+ok+`","name":"`+ok+`"}`))
	require.NoError(t, err)
}
