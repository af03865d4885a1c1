package embeddedledger

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"strconv"
	"time"
)

const (
	qTransaction = `SELECT data FROM transactions WHERE ledger_id = ? AND id = ?`
	qLogData     = `SELECT data FROM logs WHERE ledger_id = ? AND id = ?`
	qVolumesRead = `SELECT asset, input, output FROM volumes WHERE ledger_id = ? AND address = ?`
)

// createTransactionHandler is POST /v2/{ledger}/transactions: 200 with the
// transaction, the original one (and Idempotency-Hit) on a replayed key.
// The force query parameter, like the body's, lets sources overdraw.
func (l *Ledger) createTransactionHandler(w http.ResponseWriter, r *http.Request, lg ledgerRow) error {
	dryRun, ik, err := writeParams(r)
	if err != nil {
		return err
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	req, herr := decodeTxRequest(body)
	if herr != nil {
		return herr
	}
	if queryBool(queryValue(r, "force")) {
		req.Force = true
	}
	if len(ik) > maxIdempotencyKeyLen {
		return &httpError{status: http.StatusInternalServerError, code: codeInternal, message: internalMessage}
	}
	wr := l.txWrite(lg.ID, req, ik)
	wr.dryRun = dryRun
	var created newTransactionPayload
	apply := wr.apply
	wr.apply = func(ctx context.Context, tx querier, now time.Time) (string, any, bool, error) {
		typ, payload, c, err := apply(ctx, tx, now)
		if err == nil {
			created = payload.(newTransactionPayload)
		}
		return typ, payload, c, err
	}
	logID, hit, err := l.write(r.Context(), wr)
	if err != nil {
		return l.writeError(err)
	}
	if hit {
		var raw string
		if err := l.readStmt(qLogData).QueryRowContext(r.Context(), lg.ID, logID).Scan(&raw); err != nil {
			return l.internalError(fmt.Errorf("read replayed log: %w", err))
		}
		if err := json.Unmarshal([]byte(raw), &created); err != nil {
			return l.internalError(fmt.Errorf("replayed log %d is not a transaction: %w", logID, err))
		}
		w.Header().Set(headerIdempotencyHit, "true")
	}
	writeJSON(w, http.StatusOK, dataResponse{Data: created.Transaction})
	return nil
}

// getTransactionHandler is GET /v2/{ledger}/transactions/{id}.
func (l *Ledger) getTransactionHandler(w http.ResponseWriter, r *http.Request, lg ledgerRow, rawID string) error {
	id, err := strconv.ParseUint(rawID, 10, 63)
	if err != nil {
		return validationError("invalid transaction id %q", rawID)
	}
	var raw string
	err = l.readStmt(qTransaction).QueryRowContext(r.Context(), lg.ID, int64(id)).Scan(&raw)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return &httpError{status: http.StatusNotFound, code: codeNotFound, message: "transaction not found"}
	case err != nil:
		return l.internalError(err)
	}
	var tx transactionView
	if err := json.Unmarshal([]byte(raw), &tx); err != nil {
		return l.internalError(err)
	}
	expandTransaction(&tx, r.URL.Query()["expand"])
	writeJSON(w, http.StatusOK, dataResponse{Data: tx})
	return nil
}

// expandTransaction keeps the volumes a read asked for: post-commit
// volumes with expand=volumes, effective ones with expand=effectiveVolumes.
func expandTransaction(tx *transactionView, expand []string) {
	if !slices.Contains(expand, "volumes") {
		tx.PostCommitVolumes, tx.PreCommitVolumes = nil, nil
	}
	if !slices.Contains(expand, "effectiveVolumes") {
		tx.PostCommitEffectiveVolumes, tx.PreCommitEffectiveVolumes = nil, nil
	}
}

// expandAccount adds the volumes a read asked for (expand is read raw,
// not comma-split, as the real handler reads it); an account without
// movements has none to show.
func (l *Ledger) expandAccount(ctx context.Context, ledgerID int64, v *accountView, expand []string) error {
	vol, eff := slices.Contains(expand, "volumes"), slices.Contains(expand, "effectiveVolumes")
	if !vol && !eff {
		return nil
	}
	vols, err := l.accountVolumes(ctx, ledgerID, v.Address)
	if err != nil {
		return err
	}
	if vol {
		v.Volumes = vols
	}
	if eff {
		v.EffectiveVolumes = vols
	}
	return nil
}

// accountVolumes reads an account's volumes per asset; nil when it never
// moved funds (the real ledger then omits them).
func (l *Ledger) accountVolumes(ctx context.Context, ledgerID int64, address string) (map[string]volumeView, error) {
	rows, err := l.readStmt(qVolumesRead).QueryContext(ctx, ledgerID, address)
	if err != nil {
		return nil, fmt.Errorf("read volumes: %w", err)
	}
	defer rows.Close()
	var out map[string]volumeView
	for rows.Next() {
		var asset, in, outv string
		if err := rows.Scan(&asset, &in, &outv); err != nil {
			return nil, err
		}
		v := volume{input: new(big.Int), output: new(big.Int)}
		if _, ok := v.input.SetString(in, 10); !ok {
			return nil, fmt.Errorf("stored input volume %q", in)
		}
		if _, ok := v.output.SetString(outv, 10); !ok {
			return nil, fmt.Errorf("stored output volume %q", outv)
		}
		if out == nil {
			out = map[string]volumeView{}
		}
		out[asset] = v.view()
	}
	return out, rows.Err()
}
