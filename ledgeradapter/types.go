package ledgeradapter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"time"
)

// Account is V2Account.
type Account struct {
	Address string
	// Metadata is never nil.
	Metadata map[string]string
	// Volumes per asset; empty for an account that never moved funds (the
	// ledger omits them then, even with expand=volumes).
	Volumes       map[string]Volume
	FirstUsage    time.Time
	InsertionDate time.Time
	UpdatedAt     time.Time
}

// Volume is V2Volume. Amounts are arbitrary-precision integers.
type Volume struct {
	Input, Output, Balance *big.Int
}

// UnmarshalJSON accepts amounts as JSON numbers (the default) or strings
// (Formance-Bigint-As-String), and computes Balance when it is absent.
func (v *Volume) UnmarshalJSON(b []byte) error {
	var w struct {
		Input   json.RawMessage `json:"input"`
		Output  json.RawMessage `json:"output"`
		Balance json.RawMessage `json:"balance"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	var err error
	if v.Input, err = parseBigInt(w.Input); err != nil {
		return fmt.Errorf("volume input: %w", err)
	}
	if v.Output, err = parseBigInt(w.Output); err != nil {
		return fmt.Errorf("volume output: %w", err)
	}
	if len(w.Balance) == 0 || string(w.Balance) == "null" {
		v.Balance = new(big.Int).Sub(v.Input, v.Output)
		return nil
	}
	if v.Balance, err = parseBigInt(w.Balance); err != nil {
		return fmt.Errorf("volume balance: %w", err)
	}
	return nil
}

func parseBigInt(raw json.RawMessage) (*big.Int, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return new(big.Int), nil
	}
	s := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
	}
	n, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return nil, fmt.Errorf("%q is not an integer", s)
	}
	return n, nil
}

// WriteResult is the outcome of a successful write.
type WriteResult struct {
	// IdempotencyHit is true when the ledger answered from a log it already
	// had for the Idempotency-Key: nothing was applied by this call.
	IdempotencyHit bool
}

// Log types (V2Log.type).
const (
	LogTypeSetMetadata         = "SET_METADATA"
	LogTypeDeleteMetadata      = "DELETE_METADATA"
	LogTypeNewTransaction      = "NEW_TRANSACTION"
	LogTypeRevertedTransaction = "REVERTED_TRANSACTION"
)

// Log is V2Log.
type Log struct {
	ID   uint64
	Type string
	Date time.Time
	// Data is the type-specific payload, undecoded; see SetMetadata.
	Data json.RawMessage
	// IdempotencyKey is "" for a write made without one.
	IdempotencyKey string
	// Hash as the ledger renders it (base64 of the chained sha256).
	Hash string
}

// SetMetadataData is the payload of a SET_METADATA log (V2LogDataSetMetadata).
type SetMetadataData struct {
	TargetType string // "ACCOUNT" or "TRANSACTION"
	// TargetID is the address, or the transaction id in decimal.
	TargetID string
	Metadata map[string]string
}

// SetMetadata decodes the payload of a SET_METADATA log.
func (l Log) SetMetadata() (SetMetadataData, error) {
	if l.Type != LogTypeSetMetadata {
		return SetMetadataData{}, fmt.Errorf("ledgeradapter: log %d is %s, not %s", l.ID, l.Type, LogTypeSetMetadata)
	}
	var w struct {
		TargetType string            `json:"targetType"`
		TargetID   json.RawMessage   `json:"targetId"`
		Metadata   map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(l.Data, &w); err != nil {
		return SetMetadataData{}, fmt.Errorf("ledgeradapter: decode log %d: %w", l.ID, err)
	}
	id := string(w.TargetID)
	if len(w.TargetID) > 0 && w.TargetID[0] == '"' {
		if err := json.Unmarshal(w.TargetID, &id); err != nil {
			return SetMetadataData{}, fmt.Errorf("ledgeradapter: decode log %d target: %w", l.ID, err)
		}
	}
	return SetMetadataData{TargetType: w.TargetType, TargetID: id, Metadata: w.Metadata}, nil
}

// LogsPage is one page of V2LogsCursorResponse, newest log first.
type LogsPage struct {
	PageSize int
	HasMore  bool
	// Previous and Next are opaque cursors for ListLogs; "" when absent.
	Previous, Next string
	Data           []Log
}

// ---- wire decoding ----

type accountWire struct {
	Address       string            `json:"address"`
	Metadata      map[string]string `json:"metadata"`
	Volumes       map[string]Volume `json:"volumes"`
	FirstUsage    time.Time         `json:"firstUsage"`
	InsertionDate time.Time         `json:"insertionDate"`
	UpdatedAt     time.Time         `json:"updatedAt"`
}

func (w accountWire) account() Account {
	a := Account{
		Address: w.Address, Metadata: w.Metadata, Volumes: w.Volumes,
		FirstUsage: w.FirstUsage, InsertionDate: w.InsertionDate, UpdatedAt: w.UpdatedAt,
	}
	if a.Metadata == nil {
		a.Metadata = map[string]string{}
	}
	return a
}

type logWire struct {
	ID             json.Number     `json:"id"`
	Type           string          `json:"type"`
	Date           time.Time       `json:"date"`
	Data           json.RawMessage `json:"data"`
	IdempotencyKey string          `json:"idempotencyKey"`
	Hash           json.RawMessage `json:"hash"`
}

func (w logWire) log() (Log, error) {
	id, err := strconv.ParseUint(w.ID.String(), 10, 64)
	if err != nil {
		return Log{}, fmt.Errorf("log id %q: %w", w.ID, err)
	}
	l := Log{ID: id, Type: w.Type, Date: w.Date, Data: w.Data, IdempotencyKey: w.IdempotencyKey}
	if len(w.Hash) > 0 && string(w.Hash) != "null" {
		if err := json.Unmarshal(w.Hash, &l.Hash); err != nil {
			return Log{}, errors.New("log hash is not a string")
		}
	}
	return l, nil
}

type logsCursorWire struct {
	Cursor *struct {
		PageSize int       `json:"pageSize"`
		HasMore  bool      `json:"hasMore"`
		Previous string    `json:"previous"`
		Next     string    `json:"next"`
		Data     []logWire `json:"data"`
	} `json:"cursor"`
}
