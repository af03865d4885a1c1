package messages

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

const (
	// MaxBodyBytes is the largest command body accepted (64 KiB).
	MaxBodyBytes = 64 << 10
	// MaxKeyBytes is the longest idempotency key accepted.
	MaxKeyBytes = 200
	// MainBalance is the wallets service's reserved balance name.
	MainBalance = "main"
	// MaxTokenBytes bounds walletID and name. They end up in subjects, in
	// the ledger address and in the claim, and NATS refuses protocol lines
	// over 4 KiB by closing the connection: an unbounded name could knock a
	// worker off NATS.
	MaxTokenBytes = 128
)

// Field names used in validation errors. Body fields carry their JSON name.
const (
	FieldKey       = HeaderMsgID
	FieldSubject   = "subject"
	FieldBody      = "body"
	FieldWalletID  = "walletID"
	FieldName      = "name"
	FieldPriority  = "priority"
	FieldExpiresAt = "expiresAt"
)

var (
	tokenPattern   = regexp.MustCompile(`^[0-9A-Za-z_-]+$`)
	integerPattern = regexp.MustCompile(`^-?(0|[1-9][0-9]*)$`)
	// rfc3339Pattern is the lexical form of an RFC 3339 date-time (Go's
	// layout: upper-case T and Z). time.Parse checks the ranges but falls
	// back to a lenient parser that also takes a one-digit hour, a comma
	// before the fraction and offsets up to +24:60 (golang/go#54580).
	rfc3339Pattern = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$`)
)

// ValidationError says why a command can never be applied as sent. Field is
// the header, "subject", "body" or the JSON field at fault.
type ValidationError struct {
	Field  string
	Reason string
}

func (e *ValidationError) Error() string {
	return "invalid command: " + e.Field + ": " + e.Reason
}

func invalid(field, format string, args ...any) *ValidationError {
	return &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// IsValidationError reports whether err is, or wraps, a *ValidationError.
func IsValidationError(err error) bool {
	var v *ValidationError
	return errors.As(err, &v)
}

// CreateBalance is the CreateBalance v1 command (SPEC §3).
type CreateBalance struct {
	WalletID string `json:"walletID"`
	Name     string `json:"name"`
	Priority int64  `json:"priority"`
	// ExpiresAt is nil when the balance never expires.
	ExpiresAt *time.Time `json:"expiresAt"`
}

// Validate checks the fields the way the worker does.
func (c CreateBalance) Validate() error {
	if err := validToken(FieldWalletID, c.WalletID); err != nil {
		return err
	}
	if err := validToken(FieldName, c.Name); err != nil {
		return err
	}
	if c.Name == MainBalance {
		return invalid(FieldName, "%q is reserved for the wallet's main balance", MainBalance)
	}
	if c.ExpiresAt != nil {
		if y := c.ExpiresAt.Year(); y < 0 || y > 9999 {
			return invalid(FieldExpiresAt, "year %d is outside RFC 3339", y)
		}
	}
	return nil
}

// ValidateBalanceName checks a balance name as a command's: the wallets
// service's pattern, at most MaxTokenBytes.
func ValidateBalanceName(name string) error { return validToken(FieldName, name) }

func validToken(field, v string) error {
	if v == "" {
		return invalid(field, "is required")
	}
	if len(v) > MaxTokenBytes {
		return invalid(field, "is %d bytes, at most %d allowed", len(v), MaxTokenBytes)
	}
	if !isToken(v) {
		return invalid(field, "%q must match %s", truncate(v), tokenPattern)
	}
	return nil
}

// Encode returns the command's JSON body. ExpiresAt is written in UTC with
// nanosecond precision, or null.
func (c CreateBalance) Encode() ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.ExpiresAt != nil {
		t := c.ExpiresAt.UTC()
		c.ExpiresAt = &t
	}
	return json.Marshal(c)
}

// Balance returns the balance the command creates, as events and replay
// markers describe it.
//
// The expiry is in UTC and rounded to the microsecond, as the wallets service
// stores it (its times have microsecond precision): an expiry given with
// nanoseconds is written as the wallets service would write it.
func (c CreateBalance) Balance() Balance {
	b := Balance{Name: c.Name, Priority: c.Priority}
	if c.ExpiresAt != nil {
		t := c.ExpiresAt.UTC().Round(time.Microsecond)
		b.ExpiresAt = &t
	}
	return b
}

// Balance is a balance as the create that stored it described it.
type Balance struct {
	Name      string     `json:"name"`
	Priority  int64      `json:"priority"`
	ExpiresAt *time.Time `json:"expiresAt"`
}

// Equal reports whether two balances have the same name, priority and expiry
// instant.
func (b Balance) Equal(o Balance) bool {
	if b.Name != o.Name || b.Priority != o.Priority {
		return false
	}
	if b.ExpiresAt == nil || o.ExpiresAt == nil {
		return b.ExpiresAt == nil && o.ExpiresAt == nil
	}
	// To the microsecond: a marker written before expiries were rounded
	// holds nanoseconds.
	return b.ExpiresAt.Round(time.Microsecond).Equal(o.ExpiresAt.Round(time.Microsecond))
}

// ParseKey returns the idempotency key from the values of the Nats-Msg-Id
// header. It refuses a missing or empty key, more than one value, a key over
// MaxKeyBytes, and any byte outside printable ASCII.
func ParseKey(values []string) (string, error) {
	switch len(values) {
	case 0:
		return "", invalid(FieldKey, "header is required")
	case 1:
	default:
		return "", invalid(FieldKey, "header has %d values, want exactly one", len(values))
	}
	return values[0], ValidateKey(values[0])
}

// ValidateKey checks one idempotency key. Printable ASCII includes the
// space, but not at either end: NATS trims a header value (nats.go when it
// publishes and when it reads, the server when it deduplicates), so " k"
// would travel as "k", another key, and " " as none at all.
func ValidateKey(key string) error {
	if key == "" {
		return invalid(FieldKey, "is empty")
	}
	if len(key) > MaxKeyBytes {
		return invalid(FieldKey, "is %d bytes, at most %d allowed", len(key), MaxKeyBytes)
	}
	if key[0] == ' ' || key[len(key)-1] == ' ' {
		return invalid(FieldKey, "starts or ends with a space, which a NATS header does not carry (it would arrive trimmed)")
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c > 0x7e {
			return invalid(FieldKey, "byte %d is 0x%02x, only printable ASCII is allowed", i, c)
		}
	}
	return nil
}

// DecodeCreateBalance decodes and validates a command body received on
// subject. Decoding is strict: the body must be one UTF-8 JSON object of at
// most MaxBodyBytes, with no unknown, duplicated or mistyped field, and the
// subject's last token must equal walletID.
func DecodeCreateBalance(subject string, body []byte) (CreateBalance, error) {
	var c CreateBalance
	subjectWallet, err := envelope(subject, subjectCreateBalancePrefix, body)
	if err != nil {
		return c, err
	}
	if err := decodeFields(body, c.setField); err != nil {
		return c, err
	}
	if err := c.Validate(); err != nil {
		return c, err
	}
	if subjectWallet != c.WalletID {
		return c, invalid(FieldWalletID, "%q differs from the subject's wallet %q", c.WalletID, truncate(subjectWallet))
	}
	return c, nil
}

// envelope checks what every command shares: a subject of prefix and one
// wallet token, a body of at most MaxBodyBytes in UTF-8. It returns the
// subject's wallet.
func envelope(subject, prefix string, body []byte) (string, error) {
	wallet, ok := strings.CutPrefix(subject, prefix)
	if !ok || wallet == "" || strings.Contains(wallet, ".") {
		return "", invalid(FieldSubject, "%q is not %s<walletID>", truncate(subject), prefix)
	}
	if len(body) > MaxBodyBytes {
		return wallet, invalid(FieldBody, "is %d bytes, at most %d allowed", len(body), MaxBodyBytes)
	}
	if !utf8.Valid(body) {
		return wallet, invalid(FieldBody, "is not valid UTF-8")
	}
	return wallet, nil
}

// decodeFields walks the top-level object token by token so that field names
// match exactly (encoding/json would fold case), duplicates are caught, and an
// error can name the field at fault; set takes each field.
func decodeFields(body []byte, set func(name string, raw json.RawMessage) error) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return invalid(FieldBody, "is not JSON: %v", jsonErr(err))
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return invalid(FieldBody, "must be a JSON object")
	}
	seen := make(map[string]bool, 4)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return invalid(FieldBody, "is not JSON: %v", jsonErr(err))
		}
		name := tok.(string) // inside an object the decoder only yields string keys
		if seen[name] {
			return invalid(name, "appears more than once")
		}
		seen[name] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return invalid(FieldBody, "is not JSON: %v", jsonErr(err))
		}
		if err := set(name, raw); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return invalid(FieldBody, "is not JSON: %v", jsonErr(err))
	}
	// Only JSON whitespace may follow (checked on the bytes: asking the
	// decoder for one more token would build an error on every command).
	if len(bytes.TrimLeft(body[dec.InputOffset():], " \t\r\n")) != 0 {
		return invalid(FieldBody, "has data after the JSON object")
	}
	return nil
}

func (c *CreateBalance) setField(name string, raw json.RawMessage) error {
	isNull := string(raw) == "null"
	switch name {
	case FieldWalletID, FieldName:
		var s string
		if isNull || raw[0] != '"' {
			return invalid(name, "must be a string")
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return invalid(name, "must be a string")
		}
		if name == FieldWalletID {
			c.WalletID = s
		} else {
			c.Name = s
		}
	case FieldPriority:
		if isNull {
			c.Priority = 0
			return nil
		}
		p, err := parseInteger(raw)
		if err != nil {
			return invalid(FieldPriority, "%v", err)
		}
		c.Priority = p
	case FieldExpiresAt:
		if isNull {
			c.ExpiresAt = nil
			return nil
		}
		var s string
		if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
			return invalid(FieldExpiresAt, "must be an RFC 3339 string or null")
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil || !rfc3339Pattern.MatchString(s) {
			return invalid(FieldExpiresAt, "%q is not RFC 3339", truncate(s))
		}
		t = t.UTC()
		c.ExpiresAt = &t
	default:
		return invalid(truncate(name), "is not a field of CreateBalance v1")
	}
	return nil
}

// parseInteger accepts a JSON number written as a plain integer that fits in
// int64; fractions and exponents are refused even when integral.
func parseInteger(raw json.RawMessage) (int64, error) {
	s := string(raw)
	if s == "" || (s[0] != '-' && (s[0] < '0' || s[0] > '9')) {
		return 0, errors.New("must be an integer")
	}
	if !integerPattern.MatchString(s) {
		return 0, fmt.Errorf("%s is not an integer", truncate(s))
	}
	p, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s does not fit in 64 bits", truncate(s))
	}
	return p, nil
}

func jsonErr(err error) string {
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return "unexpected end of input"
	}
	return err.Error()
}

// truncate keeps error messages, and so dead-letter headers, short.
func truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// isToken is tokenPattern without a regexp (every command's key and wallet
// are checked): TestIsTokenIsTheTokenPattern keeps them in step.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
