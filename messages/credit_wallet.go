package messages

import (
	"bytes"
	"encoding/json"
	"math/big"
	"regexp"
	"time"
)

// The credit-wallet kind (SPEC §7): the wallets service's
// POST /wallets/{walletID}/credit as a command.
const (
	KindCreditWallet          = "credit-wallet"
	EventWalletCredited       = "wallet-credited"
	EventCreditWalletRejected = "credit-wallet-rejected"

	subjectCreditWalletPrefix = SubjectCommandsPrefix + KindCreditWallet + "."
)

// Codes of the money commands (SPEC §7).
const (
	// CodeInsufficientFunds: a source lacks the funds.
	CodeInsufficientFunds Code = "INSUFFICIENT_FUNDS"
	// CodeBalanceNotFound: the named balance does not exist.
	CodeBalanceNotFound Code = "BALANCE_NOT_FOUND"
)

// Subject types of a credit's sources (and a debit's destination), as the
// wallets service names them.
const (
	SubjectTypeAccount = "ACCOUNT"
	SubjectTypeWallet  = "WALLET"
)

var (
	// assetPattern is the ledger's asset pattern.
	assetPattern = regexp.MustCompile(`^[A-Z][A-Z0-9]{0,16}(_[A-Z]{1,16})?(/\d{1,6})?$`)
	// accountPattern is the ledger's account address pattern.
	accountPattern = regexp.MustCompile(`^[a-zA-Z0-9_-]+(:[a-zA-Z0-9_-]+)*$`)
)

// Monetary is an amount of an asset; the amount is an integer of any size,
// a JSON number on the wire.
type Monetary struct {
	Asset  string   `json:"asset"`
	Amount *big.Int `json:"amount"`
}

// WalletSubject is an account a credit takes from: a ledger account as is
// (ACCOUNT), or a wallet's balance (WALLET, the main balance when Balance is
// empty).
type WalletSubject struct {
	Type       string `json:"type"`
	Identifier string `json:"identifier"`
	Balance    string `json:"balance,omitempty"`
}

// CreditWallet is the credit-wallet command: the wallets service's credit
// request plus the wallet's ID.
type CreditWallet struct {
	WalletID string   `json:"walletID"`
	Amount   Monetary `json:"amount"`
	// Balance is the balance credited; empty: the main balance.
	Balance string `json:"balance,omitempty"`
	// Sources are taken from in order; empty: @world.
	Sources   []WalletSubject   `json:"sources,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	Reference string            `json:"reference,omitempty"`
	Timestamp *time.Time        `json:"timestamp,omitempty"`
}

// WalletCredited is the body of a wallet-credited event.
type WalletCredited struct {
	Key      string   `json:"key"`
	WalletID string   `json:"walletID"`
	Amount   Monetary `json:"amount"`
	Balance  string   `json:"balance"`
	Ledger   string   `json:"ledger"`
	// TransactionID is the ledger transaction of the credit.
	TransactionID uint64 `json:"transactionID"`
	// Replayed is true when an earlier delivery or publish of the same
	// command made the transaction.
	Replayed bool `json:"replayed"`
}

// CreditWalletSubject is the subject a credit of walletID is published on.
func CreditWalletSubject(walletID string) string { return subjectCreditWalletPrefix + walletID }

// DecodeCreditWallet decodes and validates a credit received on subject, as
// strictly as DecodeCreateBalance: one UTF-8 JSON object of at most
// MaxBodyBytes, no unknown, duplicated or mistyped field, the subject's
// wallet equal to walletID. The amount may be zero, as the wallets service
// allows it, not negative.
func DecodeCreditWallet(subject string, body []byte) (CreditWallet, error) {
	var c CreditWallet
	subjectWallet, err := envelope(subject, subjectCreditWalletPrefix, body)
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

// strictUnmarshal decodes raw into v, refusing unknown fields.
func strictUnmarshal(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func (c *CreditWallet) setField(name string, raw json.RawMessage) error {
	strict := func(v any) error { return strictUnmarshal(raw, v) }
	isNull := string(raw) == "null"
	switch name {
	case FieldWalletID, "balance", "reference":
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
		case "balance":
			c.Balance = s
		default:
			c.Reference = s
		}
	case "amount":
		if isNull || strict(&c.Amount) != nil || c.Amount.Amount == nil {
			return invalid(name, `must be {"asset": string, "amount": integer}`)
		}
	case "sources":
		if !isNull && strict(&c.Sources) != nil {
			return invalid(name, `must be a list of {"type", "identifier", "balance"}`)
		}
	case "metadata":
		if !isNull && strict(&c.Metadata) != nil {
			return invalid(name, "must be an object of strings")
		}
	case "timestamp":
		if isNull {
			return nil
		}
		var s string
		if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
			return invalid(name, "must be an RFC 3339 string or null")
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil || !rfc3339Pattern.MatchString(s) {
			return invalid(name, "%q is not RFC 3339", truncate(s))
		}
		t = t.UTC()
		c.Timestamp = &t
	default:
		return invalid(name, "is not a field of the command")
	}
	return nil
}

// Validate checks what DecodeCreditWallet checks, but for the subject.
func (c CreditWallet) Validate() error {
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
	if c.Balance != "" {
		if err := validToken("balance", c.Balance); err != nil {
			return err
		}
	}
	for i, s := range c.Sources {
		if err := s.validate(); err != nil {
			return invalid("sources", "%d: %s", i, err.Reason)
		}
	}
	if len(c.Reference) > 256 {
		return invalid("reference", "is %d bytes, at most 256 allowed", len(c.Reference))
	}
	return nil
}

func (s WalletSubject) validate() *ValidationError {
	switch s.Type {
	case SubjectTypeAccount:
		if !accountPattern.MatchString(s.Identifier) {
			return invalid("identifier", "%q is not a ledger account", truncate(s.Identifier))
		}
		// A balance is allowed and not checked, as the wallets service does:
		// the account is the identifier alone, and a pending debit's hold
		// keeps the balance in its subject.
	case SubjectTypeWallet:
		if err := validToken("identifier", s.Identifier); err != nil {
			return err.(*ValidationError)
		}
		if s.Balance != "" {
			if err := validToken("balance", s.Balance); err != nil {
				return err.(*ValidationError)
			}
		}
	default:
		return invalid("type", "%q is neither %s nor %s", truncate(s.Type), SubjectTypeAccount, SubjectTypeWallet)
	}
	return nil
}
