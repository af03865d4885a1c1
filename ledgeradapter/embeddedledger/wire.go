package embeddedledger

import (
	"encoding/json"
	"time"
)

// The JSON shapes below follow the real ledger's structs (and the OpenAPI
// schemas named in their comments); field names are wire names, not Go ones.

type dataResponse struct {
	Data any `json:"data"`
}

// errorResponse is V2ErrorResponse; every field is omitempty like go-libs'.
type errorResponse struct {
	ErrorCode    string `json:"errorCode,omitempty"`
	ErrorMessage string `json:"errorMessage,omitempty"`
	Details      string `json:"details,omitempty"`
}

// ledgerView is V2Ledger.
type ledgerView struct {
	Bucket   string            `json:"bucket"`
	Metadata map[string]string `json:"metadata"`
	Features map[string]string `json:"features"`
	ID       int64             `json:"id"`
	Name     string            `json:"name"`
	AddedAt  string            `json:"addedAt"`
}

// accountView is V2Account. Volumes are shown when asked for and the
// account has moved funds, as the real ledger omits them otherwise.
type accountView struct {
	Address          string                `json:"address"`
	Metadata         map[string]string     `json:"metadata"`
	FirstUsage       string                `json:"firstUsage"`
	InsertionDate    string                `json:"insertionDate"`
	UpdatedAt        string                `json:"updatedAt"`
	Volumes          map[string]volumeView `json:"volumes,omitempty"`
	EffectiveVolumes map[string]volumeView `json:"effectiveVolumes,omitempty"`
}

// logView is V2Log plus the idempotency fields the real ledger also renders.
// Hash is []byte, so it renders as standard base64 like the real one.
type logView struct {
	ID              int64           `json:"id"`
	Type            string          `json:"type"`
	Data            json.RawMessage `json:"data"`
	Date            string          `json:"date"`
	IdempotencyKey  string          `json:"idempotencyKey"`
	IdempotencyHash string          `json:"idempotencyHash"`
	Hash            []byte          `json:"hash,omitempty"`
}

// setMetadataPayload is V2LogDataSetMetadata. The real ledger logs a null
// body as "metadata": null; this one logs {} so the log stays valid against
// the OpenAPI schema (metadata is a required object).
type setMetadataPayload struct {
	TargetType string            `json:"targetType"`
	TargetID   string            `json:"targetId"`
	Metadata   map[string]string `json:"metadata"`
}

// deleteMetadataPayload is V2LogDataDeleteMetadata.
type deleteMetadataPayload struct {
	TargetType string `json:"targetType"`
	TargetID   string `json:"targetId"`
	Key        string `json:"key"`
}

// logsCursorResponse is V2LogsCursorResponse.
type logsCursorResponse struct {
	Cursor logsCursor `json:"cursor"`
}

type logsCursor struct {
	PageSize int       `json:"pageSize"`
	HasMore  bool      `json:"hasMore"`
	Previous string    `json:"previous,omitempty"`
	Next     string    `json:"next,omitempty"`
	Data     []logView `json:"data"`
}

// formatTime renders like go-libs' time: RFC 3339 in UTC with up to
// microsecond precision (dates are truncated to microseconds when recorded).
func formatTime(t time.Time) string {
	return t.UTC().Format(time.RFC3339Nano)
}
