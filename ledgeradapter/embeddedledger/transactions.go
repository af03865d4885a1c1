package embeddedledger

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/formancehq/numscript"
)

// Transactions. A transaction is a list of postings, each moving an amount
// of one asset from a source account to a destination account, applied
// atomically with its metadata: either every posting is applied or none.
// Volumes are kept per account and asset (input: what came in, output: what
// went out, balance = input - output). Only @world may go below zero,
// except where a script allows an overdraft or the request says "force".
//
// Scripts run on Formance's own Numscript interpreter
// (github.com/formancehq/numscript), reading balances and metadata from the
// write transaction they will be applied in: the committer runs one write
// at a time, so what a script read is still true when its postings are
// applied, and concurrent transactions can never overdraw an account.
// Plain postings are applied as the real ledger applies them (it turns them
// into a script of one send per posting, run by its own machine): in order,
// each one checked against the source's balance after the ones before it;
// a zero amount is a posting like any other.

// Error codes of the real ledger's transaction endpoint.
const (
	codeInsufficientFund   = "INSUFFICIENT_FUND"
	codeCompilationFailed  = "COMPILATION_FAILED"
	codeMetadataOverride   = "METADATA_OVERRIDE"
	codeNoPostings         = "NO_POSTINGS"
	codeConflict           = "CONFLICT"
	codeInterpreterRuntime = "INTERPRETER_RUNTIME"

	logTypeNewTransaction = "NEW_TRANSACTION"
	worldAccount          = "world"
)

var (
	// assetRe is the real ledger's asset pattern (pkg/assets).
	assetRe = regexp.MustCompile(`^[A-Z][A-Z0-9]{0,16}(_[A-Z]{1,16})?(/\d{1,6})?$`)
	// addressRe is the real ledger's account address pattern, enforced on
	// postings (CONTRACT §5).
	addressRe = regexp.MustCompile(`^[a-zA-Z0-9_-]+(:[a-zA-Z0-9_-]+)*$`)
)

// txRequest is V2PostTransaction, the body of POST /v2/{ledger}/transactions
// and the data of a bulk's CREATE_TRANSACTION element.
type txRequest struct {
	Postings        []postingView                `json:"postings"`
	Script          scriptRequest                `json:"script"`
	Timestamp       txTime                       `json:"timestamp"`
	Reference       string                       `json:"reference"`
	Metadata        map[string]string            `json:"metadata"`
	AccountMetadata map[string]map[string]string `json:"accountMetadata"`
	Runtime         string                       `json:"runtime,omitempty"`
	Force           bool                         `json:"force"`
}

type scriptRequest struct {
	Plain    string `json:"plain"`
	Template string `json:"template"`
	// Vars are strings, or numbers, or {"asset","amount"} objects for
	// monetaries, as the real ledger's v1-compatible script takes them.
	Vars map[string]any `json:"vars"`
}

// txTime is a request's timestamp: RFC 3339, or absent/null for "now".
type txTime struct{ time.Time }

func (t *txTime) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return err
	}
	t.Time = v
	return nil
}

// postingView is V2Posting.
type postingView struct {
	Source      string   `json:"source"`
	Destination string   `json:"destination"`
	Amount      *big.Int `json:"amount"`
	Asset       string   `json:"asset"`
}

// volumeView is V2Volume, balance included.
type volumeView struct {
	Input   *big.Int `json:"input"`
	Output  *big.Int `json:"output"`
	Balance *big.Int `json:"balance"`
}

// volumesByAccount is V2AggregatedVolumes per account: account -> asset.
type volumesByAccount map[string]map[string]volumeView

// transactionView is V2Transaction as the real ledger renders it.
type transactionView struct {
	Postings                   []postingView     `json:"postings"`
	Metadata                   map[string]string `json:"metadata"`
	Timestamp                  string            `json:"timestamp"`
	Reference                  string            `json:"reference,omitempty"`
	ID                         int64             `json:"id"`
	InsertedAt                 string            `json:"insertedAt"`
	UpdatedAt                  string            `json:"updatedAt"`
	RevertedAt                 string            `json:"revertedAt,omitempty"`
	PostCommitVolumes          volumesByAccount  `json:"postCommitVolumes,omitempty"`
	PostCommitEffectiveVolumes volumesByAccount  `json:"postCommitEffectiveVolumes,omitempty"`
	Reverted                   bool              `json:"reverted"`
	PreCommitVolumes           volumesByAccount  `json:"preCommitVolumes,omitempty"`
	PreCommitEffectiveVolumes  volumesByAccount  `json:"preCommitEffectiveVolumes,omitempty"`
}

// newTransactionPayload is V2LogDataNewTransaction (the real
// CreatedTransaction log payload).
type newTransactionPayload struct {
	Transaction     transactionView              `json:"transaction"`
	AccountMetadata map[string]map[string]string `json:"accountMetadata"`
}

// createTransactionInput is what the idempotency hash covers: the request as
// the real ledger's CreateTransaction command holds it (script or postings,
// vars, timestamp, metadata, reference, account metadata, runtime, force).
type createTransactionInput struct {
	Postings        []postingView
	Plain           string
	Template        string
	Vars            map[string]string
	Timestamp       time.Time
	Metadata        map[string]string
	Reference       string
	AccountMetadata map[string]map[string]string
	Runtime         string
	Force           bool
}

// decodeTxRequest reads and checks a transaction request the way the real
// handler does before anything reaches storage: an undecodable body, both a
// script and postings, or an invalid posting is VALIDATION; neither is
// NO_POSTINGS.
func decodeTxRequest(body []byte) (txRequest, *httpError) {
	var req txRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return txRequest{}, validationError("%s", err)
	}
	var kinds []string
	if len(req.Postings) > 0 {
		kinds = append(kinds, "postings")
	}
	if req.Script.Plain != "" {
		kinds = append(kinds, "numscript")
	}
	if req.Script.Template != "" {
		kinds = append(kinds, "template")
	}
	switch {
	case len(kinds) > 1:
		return txRequest{}, validationError("cannot pass %s and %s in the same request", kinds[0], kinds[1])
	case len(kinds) == 0:
		return txRequest{}, &httpError{status: http.StatusBadRequest, code: codeNoPostings,
			message: "you must pass either a posting array, a numscript script, or a template"}
	}
	for _, p := range req.Postings {
		switch {
		case p.Amount == nil:
			return txRequest{}, validationError("no amount defined")
		case p.Amount.Sign() < 0:
			return txRequest{}, validationError("negative amount")
		case !addressRe.MatchString(p.Source):
			return txRequest{}, validationError("invalid source address")
		case !addressRe.MatchString(p.Destination):
			return txRequest{}, validationError("invalid destination address")
		case !assetRe.MatchString(p.Asset):
			return txRequest{}, validationError("invalid asset")
		}
	}
	return req, nil
}

// scriptVars turns the request's vars into the strings the interpreter
// takes, as the real ledger's ScriptV1.ToCore does.
func scriptVars(in map[string]any) map[string]string {
	out := make(map[string]string, len(in))
	for k, v := range in {
		switch v := v.(type) {
		case string:
			out[k] = v
		case map[string]any:
			switch amount := v["amount"].(type) {
			case string:
				out[k] = fmt.Sprintf("%s %s", v["asset"], amount)
			case float64:
				out[k] = fmt.Sprintf("%s %d", v["asset"], int(amount))
			}
		default:
			out[k] = fmt.Sprint(v)
		}
	}
	return out
}

func (req txRequest) idempotencyInput() createTransactionInput {
	return createTransactionInput{
		Postings: req.Postings, Plain: req.Script.Plain, Template: req.Script.Template,
		Vars: scriptVars(req.Script.Vars), Timestamp: req.Timestamp.Time, Metadata: req.Metadata,
		Reference: req.Reference, AccountMetadata: req.AccountMetadata, Runtime: req.Runtime, Force: req.Force,
	}
}

// script is a request's Numscript, parsed, with what the machine of the
// real ledger would say of it before running it (sourcecheck.go).
type script struct {
	parsed numscript.ParseResult
	// refusal is the machine's compilation failure the interpreter does
	// not have, "" when none.
	refusal string
	// unquoted maps the text between the quotes of each string literal
	// holding an escape to its value: the machine reads literals as Go
	// strings, the interpreter keeps their text as written.
	unquoted map[string]string
}

func compileScript(src string) *script {
	sc := &script{parsed: numscript.Parse(src)}
	toks := tokenize(src)
	switch {
	case missingNewline(toks):
		sc.refusal = "missing NEWLINE"
	case unboundedNotLast(src):
		sc.refusal = "an unbounded subsource can only be in last position"
	}
	for _, t := range toks {
		if len(t) >= 2 && t[0] == '"' && strings.Contains(t, "\\") {
			if v, err := strconv.Unquote(t); err == nil {
				if sc.unquoted == nil {
					sc.unquoted = map[string]string{}
				}
				sc.unquoted[t[1:len(t)-1]] = v
			}
		}
	}
	return sc
}

// unquote is the machine's value of a string the interpreter produced.
func (sc *script) unquote(v string) string {
	if u, ok := sc.unquoted[v]; ok {
		return u
	}
	return v
}

// scriptCache keeps compiled scripts by their text: a service sends the
// same few templates with other vars. A parse result is only read by the
// interpreter, so one can serve any number of runs.
type scriptCache struct {
	mu sync.Mutex
	m  map[string]*script
}

const maxCachedScripts = 256

func (c *scriptCache) get(src string) *script {
	c.mu.Lock()
	sc, ok := c.m[src]
	c.mu.Unlock()
	if ok {
		return sc
	}
	sc = compileScript(src)
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCachedScripts {
		c.m = map[string]*script{}
	}
	c.m[src] = sc
	c.mu.Unlock()
	return sc
}

// txWrite builds the write of a transaction request. The script is parsed
// here, outside the committer; it runs inside it.
func (l *Ledger) txWrite(ledgerID int64, req txRequest, ik string) write {
	var parsed *script
	if req.Script.Plain != "" {
		parsed = l.scripts.get(req.Script.Plain)
	}
	w := write{ledgerID: ledgerID, ikey: ik}
	if ik != "" {
		w.ihash = idempotencyHash(req.idempotencyInput())
	}
	w.apply = func(ctx context.Context, tx querier, now time.Time) (string, any, bool, error) {
		payload, err := applyTransaction(ctx, tx, ledgerID, req, parsed, now)
		if err != nil {
			return "", nil, false, err
		}
		return logTypeNewTransaction, payload, false, nil
	}
	return w
}

// volumeKey names one account's volumes of one asset.
type volumeKey struct{ account, asset string }

type volume struct{ input, output *big.Int }

func (v volume) balance() *big.Int { return new(big.Int).Sub(v.input, v.output) }

func (v volume) view() volumeView {
	return volumeView{Input: new(big.Int).Set(v.input), Output: new(big.Int).Set(v.output), Balance: v.balance()}
}

// txState is what one transaction reads and changes, before it is stored:
// volumes as they stand in the write transaction, then as its postings
// leave them.
type txState struct {
	ctx      context.Context
	tx       querier
	ledgerID int64
	volumes  map[volumeKey]*volume
	metadata map[string]map[string]string // accounts read by the script
}

const (
	qVolume         = `SELECT input, output FROM volumes WHERE ledger_id = ? AND address = ? AND asset = ?`
	qVolumesOf      = `SELECT asset, input, output FROM volumes WHERE ledger_id = ? AND address = ?`
	qUpsertVolume   = `INSERT INTO volumes (ledger_id, address, asset, input, output) VALUES (?, ?, ?, ?, ?) ON CONFLICT (ledger_id, address, asset) DO UPDATE SET input = excluded.input, output = excluded.output`
	qLastTxID       = `SELECT last FROM transaction_ids WHERE ledger_id = ?`
	qSetLastTxID    = `INSERT INTO transaction_ids (ledger_id, last) VALUES (?, ?) ON CONFLICT (ledger_id) DO UPDATE SET last = max(last, excluded.last)`
	qReferenceTaken = `SELECT EXISTS (SELECT 1 FROM transactions WHERE ledger_id = ? AND reference = ?)`
	qInsertTx       = `INSERT INTO transactions (ledger_id, id, data, reference, timestamp) VALUES (?, ?, ?, ?, ?)`
	qIndexTx        = `INSERT INTO transaction_accounts (ledger_id, address, id, source, destination) VALUES (?, ?, ?, ?, ?)`
	qTouchAccount   = `INSERT INTO accounts (ledger_id, address, metadata, first_usage, insertion_date, updated_at) VALUES (?, ?, '{}', ?, ?, ?) ON CONFLICT (ledger_id, address) DO UPDATE SET first_usage = min(first_usage, excluded.first_usage)`
)

func (s *txState) volume(account, asset string) (*volume, error) {
	k := volumeKey{account, asset}
	if v, ok := s.volumes[k]; ok {
		return v, nil
	}
	var in, out string
	v := &volume{input: new(big.Int), output: new(big.Int)}
	err := s.tx.QueryRowContext(s.ctx, qVolume, s.ledgerID, account, asset).Scan(&in, &out)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("read volumes: %w", err)
	default:
		if _, ok := v.input.SetString(in, 10); !ok {
			return nil, fmt.Errorf("stored input volume %q", in)
		}
		if _, ok := v.output.SetString(out, 10); !ok {
			return nil, fmt.Errorf("stored output volume %q", out)
		}
	}
	s.volumes[k] = v
	return v, nil
}

// assetsOf lists the assets an account holds volumes of, for a script's
// "every asset" balance query.
func (s *txState) assetsOf(account string) ([]string, error) {
	rows, err := s.tx.QueryContext(s.ctx, qVolumesOf, s.ledgerID, account)
	if err != nil {
		return nil, fmt.Errorf("read volumes: %w", err)
	}
	defer rows.Close()
	var assets []string
	for rows.Next() {
		var asset, in, out string
		if err := rows.Scan(&asset, &in, &out); err != nil {
			return nil, err
		}
		assets = append(assets, asset)
	}
	return assets, rows.Err()
}

// GetBalances is the interpreter's Store: balances as the write transaction
// sees them.
func (s *txState) GetBalances(_ context.Context, q numscript.BalanceQuery) (numscript.Balances, error) {
	var out numscript.Balances
	seen := map[[3]string]bool{}
	add := func(item numscript.BalanceQueryItem, asset string) error {
		stored := asset
		if item.Color != "" {
			stored = coloredAsset(asset, item.Color)
		}
		k := [3]string{item.Account, asset, item.Color}
		if seen[k] {
			return nil
		}
		seen[k] = true
		v, err := s.volume(item.Account, stored)
		if err != nil {
			return err
		}
		out = append(out, numscript.BalanceRow{Account: item.Account, Asset: asset, Color: item.Color, Scope: item.Scope, Amount: v.balance()})
		return nil
	}
	for _, item := range q {
		base, all := strings.CutSuffix(item.Asset, "/*")
		if !all {
			if err := add(item, item.Asset); err != nil {
				return nil, err
			}
			continue
		}
		assets, err := s.assetsOf(item.Account)
		if err != nil {
			return nil, err
		}
		for _, a := range assets {
			if a == base || strings.HasPrefix(a, base+"/") {
				if err := add(item, a); err != nil {
					return nil, err
				}
			}
		}
	}
	return out, nil
}

// coloredAsset is how the interpreter stores asset ASSET/n of color C:
// ASSET_C/n.
func coloredAsset(asset, color string) string {
	name, scale, ok := strings.Cut(asset, "/")
	if !ok {
		return name + "_" + color
	}
	return name + "_" + color + "/" + scale
}

// GetAccountsMetadata is the interpreter's Store: account metadata as the
// write transaction sees it.
func (s *txState) GetAccountsMetadata(_ context.Context, q numscript.MetadataQuery) (numscript.AccountsMetadata, error) {
	var out numscript.AccountsMetadata
	for _, item := range q {
		md, ok := s.metadata[item.Account]
		if !ok {
			var raw string
			err := s.tx.QueryRowContext(s.ctx, qAccountMetadata, s.ledgerID, item.Account).Scan(&raw)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				md = map[string]string{}
			case err != nil:
				return nil, fmt.Errorf("read account metadata: %w", err)
			default:
				if err := json.Unmarshal([]byte(raw), &md); err != nil {
					return nil, fmt.Errorf("decode account metadata: %w", err)
				}
			}
			s.metadata[item.Account] = md
		}
		for _, k := range item.Keys {
			if v, ok := md[k]; ok {
				out = append(out, numscript.AccountMetadataRow{Account: item.Account, Key: k, Value: v, Scope: item.Scope})
			}
		}
	}
	return out, nil
}

// txResult is what running a request produced, before anything is stored.
type txResult struct {
	postings        []postingView
	metadata        map[string]string
	accountMetadata map[string]map[string]string
}

// run computes the postings and metadata of a request against the current
// state; it changes nothing stored.
func (s *txState) run(req txRequest, parsed *script) (txResult, error) {
	if parsed == nil {
		return s.runPostings(req)
	}
	if errs := parsed.parsed.GetParsingErrors(); len(errs) > 0 {
		return txResult{}, &httpError{status: http.StatusBadRequest, code: codeCompilationFailed,
			message: "failed to compile script: " + numscript.ParseErrorsToString(errs, req.Script.Plain)}
	}
	if parsed.refusal != "" {
		return txResult{}, &httpError{status: http.StatusBadRequest, code: codeCompilationFailed,
			message: "failed to compile script: " + parsed.refusal}
	}
	res, ierr := parsed.parsed.Run(s.ctx, scriptVars(req.Script.Vars), s)
	if ierr != nil {
		return txResult{}, scriptError(ierr)
	}
	out := txResult{metadata: map[string]string{}, accountMetadata: map[string]map[string]string{}}
	for _, p := range res.Postings {
		asset := p.Asset
		if p.Color != "" {
			asset = coloredAsset(asset, p.Color)
		}
		out.postings = append(out.postings, postingView{Source: p.Source, Destination: p.Destination, Amount: new(big.Int).Set(p.Amount), Asset: asset})
	}
	for k, v := range res.Metadata {
		out.metadata[parsed.unquote(k)] = parsed.unquote(v)
	}
	for _, row := range res.AccountsMetadata {
		if out.accountMetadata[row.Account] == nil {
			out.accountMetadata[row.Account] = map[string]string{}
		}
		out.accountMetadata[row.Account][parsed.unquote(row.Key)] = parsed.unquote(row.Value)
	}
	return out, nil
}

// runPostings checks plain postings as the real ledger's machine runs the
// script it makes of them: one send per posting, in order, each source but
// @world limited to its balance unless force is set.
func (s *txState) runPostings(req txRequest) (txResult, error) {
	out := txResult{metadata: map[string]string{}, accountMetadata: map[string]map[string]string{}}
	moved := map[volumeKey]*big.Int{} // balance changes so far, by account and asset
	balance := func(account, asset string) (*big.Int, error) {
		v, err := s.volume(account, asset)
		if err != nil {
			return nil, err
		}
		b := v.balance()
		if d, ok := moved[volumeKey{account, asset}]; ok {
			b.Add(b, d)
		}
		return b, nil
	}
	change := func(account, asset string, by *big.Int) {
		k := volumeKey{account, asset}
		if moved[k] == nil {
			moved[k] = new(big.Int)
		}
		moved[k].Add(moved[k], by)
	}
	for _, p := range req.Postings {
		if p.Source != worldAccount && !req.Force {
			b, err := balance(p.Source, p.Asset)
			if err != nil {
				return txResult{}, err
			}
			if b.Cmp(p.Amount) < 0 {
				return txResult{}, insufficientFunds(p.Source, p.Asset, p.Amount, b)
			}
		}
		change(p.Source, p.Asset, new(big.Int).Neg(p.Amount))
		change(p.Destination, p.Asset, p.Amount)
		out.postings = append(out.postings, postingView{Source: p.Source, Destination: p.Destination, Amount: new(big.Int).Set(p.Amount), Asset: p.Asset})
	}
	return out, nil
}

func insufficientFunds(account, asset string, needed, available *big.Int) *httpError {
	return &httpError{status: http.StatusBadRequest, code: codeInsufficientFund,
		message: fmt.Sprintf("running numscript: script execution failed: account(s) @%s had/have insufficient funds (needed [%s %s], available [%s %s])",
			account, asset, needed, asset, available)}
}

// scriptError answers an interpreter failure with the code the real
// ledger's machine gives the same script: missing funds are
// INSUFFICIENT_FUND, errors in the script or its vars COMPILATION_FAILED,
// the rest of what a script can do wrong at run time
// INTERPRETER_RUNTIME. A failure of the store is no answer: it aborts.
func scriptError(err error) error {
	var (
		missing   numscript.MissingFundsErr
		storeBal  numscript.QueryBalanceError
		storeMeta numscript.QueryMetadataError
	)
	switch {
	case errors.As(err, &storeBal), errors.As(err, &storeMeta):
		return fmt.Errorf("script store: %w", err)
	case errors.As(err, &missing):
		return &httpError{status: http.StatusBadRequest, code: codeInsufficientFund, message: "running numscript: " + err.Error()}
	case isCompilationError(err):
		return &httpError{status: http.StatusBadRequest, code: codeCompilationFailed, message: "failed to compile script: " + err.Error()}
	}
	return &httpError{status: http.StatusBadRequest, code: codeInterpreterRuntime, message: err.Error()}
}

// isCompilationError tells the errors that the real ledger's machine finds
// before running (a var missing, of the wrong form or type, a name or
// function it does not know).
func isCompilationError(err error) bool {
	var (
		e1  numscript.MissingVariableErr
		e2  numscript.InvalidAccountName
		e3  numscript.InvalidMonetaryLiteral
		e4  numscript.InvalidNumberLiteral
		e5  numscript.BadPortionParsingErr
		e6  numscript.TypeError
		e7  numscript.UnboundVariableErr
		e8  numscript.UnboundFunctionErr
		e9  numscript.BadArityErr
		e10 numscript.InvalidTypeErr
		e11 numscript.ExperimentalFeature
		e12 numscript.InvalidAsset
	)
	return errors.As(err, &e1) || errors.As(err, &e2) || errors.As(err, &e3) || errors.As(err, &e4) ||
		errors.As(err, &e5) || errors.As(err, &e6) || errors.As(err, &e7) || errors.As(err, &e8) ||
		errors.As(err, &e9) || errors.As(err, &e10) || errors.As(err, &e11) || errors.As(err, &e12)
}

// applyTransaction runs a request and, when it may be applied, stores it:
// the next transaction id, the volumes its postings change, the accounts
// they touch (created when new), the metadata it sets, and the
// transaction. Every refusal comes before the first change, so a refused
// request leaves nothing behind, except a reference conflict, which uses up
// an id as the real ledger's sequence does.
func applyTransaction(ctx context.Context, tx querier, ledgerID int64, req txRequest, parsed *script, now time.Time) (newTransactionPayload, error) {
	s := &txState{ctx: ctx, tx: tx, ledgerID: ledgerID, volumes: map[volumeKey]*volume{}, metadata: map[string]map[string]string{}}
	res, err := s.run(req, parsed)
	if err != nil {
		return newTransactionPayload{}, err
	}
	for k, v := range req.Metadata {
		if res.metadata[k] != "" {
			return newTransactionPayload{}, &httpError{status: http.StatusBadRequest, code: codeMetadataOverride,
				message: fmt.Sprintf("cannot override metadata '%s'", k)}
		}
		res.metadata[k] = v
	}
	for account, md := range req.AccountMetadata {
		if res.accountMetadata[account] == nil {
			res.accountMetadata[account] = map[string]string{}
		}
		for k, v := range md {
			res.accountMetadata[account][k] = v
		}
	}

	var last int64
	if err := tx.QueryRowContext(ctx, qLastTxID, ledgerID).Scan(&last); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return newTransactionPayload{}, fmt.Errorf("read transaction sequence: %w", err)
	}
	id := last + 1
	if _, err := tx.ExecContext(ctx, qSetLastTxID, ledgerID, id); err != nil {
		return newTransactionPayload{}, fmt.Errorf("advance transaction sequence: %w", err)
	}
	if len(res.postings) == 0 {
		// The interpreter leaves out postings of zero; where every posting
		// is zero the real ledger's machine makes a transaction of them,
		// and this one refuses. The id that transaction took is used up
		// all the same, so that the ids after it are the real ledger's.
		return newTransactionPayload{}, &httpError{status: http.StatusBadRequest, code: codeNoPostings, message: "transaction has no postings"}
	}
	if req.Reference != "" {
		var taken bool
		if err := tx.QueryRowContext(ctx, qReferenceTaken, ledgerID, req.Reference).Scan(&taken); err != nil {
			return newTransactionPayload{}, fmt.Errorf("look up reference: %w", err)
		}
		if taken {
			return newTransactionPayload{}, &httpError{status: http.StatusConflict, code: codeConflict,
				message: fmt.Sprintf("duplicate reference %q", req.Reference)}
		}
	}

	timestamp := now
	if !req.Timestamp.IsZero() {
		timestamp = req.Timestamp.UTC().Truncate(time.Microsecond)
	}
	post := volumesByAccount{}
	pre := volumesByAccount{}
	touched := []string{}
	for _, p := range res.postings {
		for _, side := range []struct {
			account string
			out     bool
		}{{p.Source, true}, {p.Destination, false}} {
			v, err := s.volume(side.account, p.Asset)
			if err != nil {
				return newTransactionPayload{}, err
			}
			if pre[side.account] == nil {
				pre[side.account], post[side.account] = map[string]volumeView{}, map[string]volumeView{}
				touched = append(touched, side.account)
			}
			if _, ok := pre[side.account][p.Asset]; !ok {
				pre[side.account][p.Asset] = v.view()
			}
			if side.out {
				v.output.Add(v.output, p.Amount)
			} else {
				v.input.Add(v.input, p.Amount)
			}
			post[side.account][p.Asset] = v.view()
		}
	}
	// Every volume the transaction read or moved is written: the real
	// ledger locks the volumes a script reads by creating their rows, so
	// an account a script looked at without moving gets volumes of zero.
	for k, v := range s.volumes {
		if _, err := tx.ExecContext(ctx, qUpsertVolume, ledgerID, k.account, k.asset, v.input.String(), v.output.String()); err != nil {
			return newTransactionPayload{}, fmt.Errorf("write volumes: %w", err)
		}
	}
	sort.Strings(touched)
	for _, account := range touched {
		if _, err := tx.ExecContext(ctx, qTouchAccount, ledgerID, account, timestamp.UnixMicro(), now.UnixMicro(), now.UnixMicro()); err != nil {
			return newTransactionPayload{}, fmt.Errorf("upsert account: %w", err)
		}
	}
	for _, account := range slices.Sorted(maps.Keys(res.accountMetadata)) {
		if _, _, _, err := saveAccountMetadata(ledgerID, account, res.accountMetadata[account])(ctx, tx, now); err != nil {
			return newTransactionPayload{}, err
		}
	}

	view := transactionView{
		Postings: res.postings, Metadata: res.metadata, Timestamp: formatTime(timestamp), Reference: req.Reference,
		ID: id, InsertedAt: formatTime(now), UpdatedAt: formatTime(now),
		PostCommitVolumes: post, PostCommitEffectiveVolumes: post,
		PreCommitVolumes: pre, PreCommitEffectiveVolumes: pre,
	}
	data, err := json.Marshal(view)
	if err != nil {
		return newTransactionPayload{}, err
	}
	if _, err := tx.ExecContext(ctx, qInsertTx, ledgerID, id, string(data), nullString(req.Reference), timestamp.UnixMicro()); err != nil {
		return newTransactionPayload{}, fmt.Errorf("insert transaction: %w", err)
	}
	if err := indexTransaction(ctx, tx, ledgerID, id, res.postings); err != nil {
		return newTransactionPayload{}, err
	}
	return newTransactionPayload{Transaction: view, AccountMetadata: res.accountMetadata}, nil
}

// indexTransaction records the accounts a transaction's postings move (see
// ddlTransactionAccounts).
func indexTransaction(ctx context.Context, tx querier, ledgerID, id int64, postings []postingView) error {
	type roles struct{ source, destination int }
	moved := map[string]*roles{}
	var order []string
	role := func(a string) *roles {
		r, ok := moved[a]
		if !ok {
			r = &roles{}
			moved[a] = r
			order = append(order, a)
		}
		return r
	}
	for _, p := range postings {
		role(p.Source).source = 1
		role(p.Destination).destination = 1
	}
	for _, a := range order {
		if _, err := tx.ExecContext(ctx, qIndexTx, ledgerID, a, id, moved[a].source, moved[a].destination); err != nil {
			return fmt.Errorf("index transaction: %w", err)
		}
	}
	return nil
}
