package messages

import (
	"encoding/json"
	"strings"
	"time"
)

// The debit-wallet kind (SPEC §7): the wallets service's
// POST /wallets/{walletID}/debit as a command; with pending, a hold.
const (
	KindDebitWallet          = "debit-wallet"
	EventWalletDebited       = "wallet-debited"
	EventDebitWalletRejected = "debit-wallet-rejected"

	subjectDebitWalletPrefix = SubjectCommandsPrefix + KindDebitWallet + "."

	// AllBalances selects every balance of the wallet.
	AllBalances = "*"

	// CodeNotIdempotent: a debit whose sources the wallets service refuses
	// to make idempotent (every balance, or one that expires later).
	CodeNotIdempotent Code = "NOT_IDEMPOTENT"
)

// DebitWallet is the debit-wallet command: the wallets service's debit
// request plus the wallet's ID.
type DebitWallet struct {
	WalletID string   `json:"walletID"`
	Amount   Monetary `json:"amount"`
	// Balances are the sources, in order; empty: the main balance; ["*"]:
	// every balance (which a command, always keyed, cannot use).
	Balances []string `json:"balances,omitempty"`
	// Destination: empty, @world.
	Destination *WalletSubject `json:"destination,omitempty"`
	// Pending moves the amount into a new hold, whose ID derives from the
	// key (HoldIDOf).
	Pending     bool              `json:"pending,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Description string            `json:"description,omitempty"`
	Reference   string            `json:"reference,omitempty"`
	Timestamp   *time.Time        `json:"timestamp,omitempty"`
}

// Hold is a hold as the wallets service answers a pending debit.
type Hold struct {
	ID          string            `json:"id"`
	WalletID    string            `json:"walletID"`
	Destination WalletSubject     `json:"destination"`
	Asset       string            `json:"asset"`
	Metadata    map[string]string `json:"metadata"`
	Description string            `json:"description"`
}

// WalletDebited is the body of a wallet-debited event; Hold is set for a
// pending debit.
type WalletDebited struct {
	Key           string   `json:"key"`
	WalletID      string   `json:"walletID"`
	Amount        Monetary `json:"amount"`
	Ledger        string   `json:"ledger"`
	TransactionID uint64   `json:"transactionID"`
	Hold          *Hold    `json:"hold,omitempty"`
	Replayed      bool     `json:"replayed"`
}

// DebitWalletSubject is the subject a debit of walletID is published on.
func DebitWalletSubject(walletID string) string { return subjectDebitWalletPrefix + walletID }

// DecodeDebitWallet decodes and validates a debit received on subject, as
// strictly as the other commands. A pending debit with a timestamp, which
// the wallets service cannot apply, and "*" beside other balances are
// invalid.
func DecodeDebitWallet(subject string, body []byte) (DebitWallet, error) {
	var c DebitWallet
	subjectWallet, err := envelope(subject, subjectDebitWalletPrefix, body)
	if err != nil {
		return c, err
	}
	err = decodeFields(body, func(name string, raw json.RawMessage) error {
		isNull := string(raw) == "null"
		switch name {
		case FieldWalletID, "description", "reference":
			if isNull && name != FieldWalletID {
				return nil // absent, as the wallets service decodes it
			}
			var s string
			if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
				return invalid(name, "must be a string")
			}
			switch name {
			case FieldWalletID:
				c.WalletID = s
			case "description":
				c.Description = s
			default:
				c.Reference = s
			}
		case "amount":
			if isNull || strictUnmarshal(raw, &c.Amount) != nil || c.Amount.Amount == nil {
				return invalid(name, `must be {"asset": string, "amount": integer}`)
			}
		case "balances":
			if !isNull && strictUnmarshal(raw, &c.Balances) != nil {
				return invalid(name, "must be a list of balance names")
			}
		case "destination":
			if !isNull && strictUnmarshal(raw, &c.Destination) != nil {
				return invalid(name, `must be {"type", "identifier", "balance"}`)
			}
		case "pending":
			if !isNull && json.Unmarshal(raw, &c.Pending) != nil {
				return invalid(name, "must be a boolean")
			}
		case "metadata":
			if !isNull && strictUnmarshal(raw, &c.Metadata) != nil {
				return invalid(name, "must be an object of strings")
			}
		case "timestamp":
			if isNull {
				return nil
			}
			t, err := parseTime(name, raw)
			if err != nil {
				return err
			}
			c.Timestamp = &t
		default:
			return invalid(name, "is not a field of the command")
		}
		return nil
	})
	if err != nil {
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

// parseTime reads an RFC 3339 string, in UTC.
func parseTime(field string, raw json.RawMessage) (time.Time, error) {
	var s string
	if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return time.Time{}, invalid(field, "must be an RFC 3339 string or null")
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || !rfc3339Pattern.MatchString(s) {
		return time.Time{}, invalid(field, "%q is not RFC 3339", truncate(s))
	}
	return t.UTC(), nil
}

// Validate checks what DecodeDebitWallet checks, but for the subject.
func (c DebitWallet) Validate() error {
	if err := validToken(FieldWalletID, c.WalletID); err != nil {
		return err
	}
	if c.Amount.Amount == nil {
		return invalid("amount", "is required")
	}
	if c.Amount.Amount.Sign() < 0 {
		return invalid("amount", "must not be negative")
	}
	if !assetPattern.MatchString(c.Amount.Asset) {
		return invalid("amount", "asset %q must match %s", truncate(c.Amount.Asset), assetPattern)
	}
	for _, b := range c.Balances {
		if b == AllBalances {
			if len(c.Balances) > 1 {
				return invalid("balances", "%q selects every balance and cannot stand beside others", AllBalances)
			}
			continue
		}
		if err := validToken("balances", b); err != nil {
			return err
		}
	}
	if c.Destination != nil {
		if err := c.Destination.validate(); err != nil {
			return invalid("destination", "%s", err.Reason)
		}
	}
	if c.Pending && c.Timestamp != nil {
		return invalid("timestamp", "a pending debit (a hold) takes no timestamp")
	}
	for k := range c.Metadata {
		if c.Pending && strings.ContainsAny(k, "\"\\\n") {
			return invalid("metadata", "key %q of a hold cannot hold a quote, a backslash or a line end", truncate(k))
		}
	}
	return nil
}
