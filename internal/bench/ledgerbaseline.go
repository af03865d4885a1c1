package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/messages"
)

// LedgerBaseline is one same-run baseline on the ledger at the URL: new
// balances written straight to the ledger with plain net/http, each as the
// worker would write it (its address, its metadata, its Idempotency-Key),
// on addresses nothing else uses.
type LedgerBaseline struct {
	// Name is single, readThenWrite or bulk.
	Name string `json:"name"`
	// InFlight is how many requests it kept in flight, PerRequest how many
	// balances one write request carried.
	InFlight   int `json:"inFlight"`
	PerRequest int `json:"perRequest"`
	// Balances is how many new balances it set out to write, Created how
	// many the ledger applied, Failed the others (no retries).
	Balances int `json:"balances"`
	Created  int `json:"created"`
	Failed   int `json:"failed"`
	// Seconds runs from the first request to the end of the last answer.
	Seconds          float64 `json:"seconds"`
	CreatesPerSecond float64 `json:"createsPerSecond"`
	// Requests is every request sent, reads included; Timeouts those that
	// hit the client timeout; Statuses counts the answers by HTTP status
	// ("0": none came).
	Requests int64            `json:"requests"`
	Timeouts int64            `json:"timeouts"`
	Statuses map[string]int64 `json:"statuses"`
	// Latency is per request.
	Latency Latency `json:"latencyMs"`
}

// ledgerProber sends the baselines' requests.
type ledgerProber struct {
	hc      *http.Client
	base    string
	ledger  string
	timeout time.Duration
	run     string // tells this run's addresses from any other's
}

func newLedgerProber(base, ledger string, timeout time.Duration) *ledgerProber {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 512, 512
	return &ledgerProber{
		hc:   &http.Client{Transport: tr, Timeout: timeout},
		base: strings.TrimRight(base, "/"), ledger: ledger, timeout: timeout,
		run: strconv.FormatInt(time.Now().UnixNano(), 36),
	}
}

func (p *ledgerProber) close() { p.hc.CloseIdleConnections() }

// balance is the i-th new balance of baseline name: its address, its
// metadata and its ledger Idempotency-Key, as the handler computes them.
func (p *ledgerProber) balance(name string, i int) (addr string, md map[string]string, ik string) {
	key := fmt.Sprintf("bench-%s-%s-%07d", name, p.run, i)
	cmd := messages.CreateBalance{WalletID: fmt.Sprintf("bench-%s-%s-%07d", name, p.run, i), Name: "savings", Priority: int64(i % 5)}
	return handlers.AccountAddress("", cmd.WalletID, cmd.Name), handlers.BalanceMetadata(key, cmd), handlers.LedgerIdempotencyKey(key)
}

// answer is one request's fate.
type answer struct {
	status  int // 0: no answer
	timeout bool
	body    []byte
	d       time.Duration
}

func (p *ledgerProber) do(ctx context.Context, method, path string, body []byte, ik string) answer {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, p.base+path, rd)
	if err != nil {
		return answer{}
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if ik != "" {
		req.Header.Set("Idempotency-Key", ik)
	}
	start := time.Now()
	resp, err := p.hc.Do(req)
	if err != nil {
		return answer{timeout: isTimeout(err), d: time.Since(start)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	a := answer{status: resp.StatusCode, body: b, d: time.Since(start)}
	if err != nil {
		a.status, a.timeout = 0, isTimeout(err)
	}
	return a
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (p *ledgerProber) accountPath(addr string) string {
	return "/v2/" + url.PathEscape(p.ledger) + "/accounts/" + url.PathEscape(addr)
}

// write is the worker's write: POST metadata with its Idempotency-Key.
func (p *ledgerProber) write(ctx context.Context, addr string, md map[string]string, ik string) answer {
	body, _ := json.Marshal(md) // a map of strings
	return p.do(ctx, http.MethodPost, p.accountPath(addr)+"/metadata", body, ik)
}

// baselineRun runs requests at inFlight and tallies their answers.
type baselineRun struct {
	mu  sync.Mutex
	res LedgerBaseline
	lat []time.Duration
}

func (b *baselineRun) record(a answer) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.res.Requests++
	if a.timeout {
		b.res.Timeouts++
	}
	b.res.Statuses[strconv.Itoa(a.status)]++
	b.lat = append(b.lat, a.d)
}

func (b *baselineRun) created(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.res.Created += n
}

// run calls task(0..tasks-1) with inFlight at once and returns the
// baseline's figures.
func (b *baselineRun) run(ctx context.Context, tasks, inFlight int, task func(context.Context, int)) LedgerBaseline {
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range min(inFlight, tasks) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= tasks || ctx.Err() != nil {
					return
				}
				task(ctx, i)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.res
	r.Failed = r.Balances - r.Created
	r.Seconds = elapsed.Seconds()
	if r.Seconds > 0 {
		r.CreatesPerSecond = float64(r.Created) / r.Seconds
	}
	r.Latency = latencyOf(b.lat)
	return r
}

func newBaselineRun(name string, balances, inFlight, perRequest int) *baselineRun {
	return &baselineRun{res: LedgerBaseline{
		Name: name, Balances: balances, InFlight: inFlight, PerRequest: perRequest, Statuses: map[string]int64{},
	}}
}

// single writes n new balances, one request each, inFlight at once.
func (p *ledgerProber) single(ctx context.Context, n, inFlight int) LedgerBaseline {
	b := newBaselineRun("single", n, inFlight, 1)
	return b.run(ctx, n, inFlight, func(ctx context.Context, i int) {
		addr, md, ik := p.balance("single", i)
		a := p.write(ctx, addr, md, ik)
		b.record(a)
		if a.status == http.StatusNoContent {
			b.created(1)
		}
	})
}

// readThenWrite is the wallets service's path: GET the account, and POST
// its metadata when the ledger says it is absent.
func (p *ledgerProber) readThenWrite(ctx context.Context, n, inFlight int) LedgerBaseline {
	b := newBaselineRun("readThenWrite", n, inFlight, 1)
	return b.run(ctx, n, inFlight, func(ctx context.Context, i int) {
		addr, md, ik := p.balance("rtw", i)
		a := p.do(ctx, http.MethodGet, p.accountPath(addr)+"?expand=volumes", nil, "")
		b.record(a)
		if a.status != http.StatusNotFound {
			return // an error, or (impossible on a fresh address) an account
		}
		a = p.write(ctx, addr, md, ik)
		b.record(a)
		if a.status == http.StatusNoContent {
			b.created(1)
		}
	})
}

// bulk writes n new balances as ADD_METADATA elements of
// _bulk?continueOnFailure=true&parallel=true, size a request.
func (p *ledgerProber) bulk(ctx context.Context, n, size, inFlight int) LedgerBaseline {
	b := newBaselineRun("bulk", n, inFlight, size)
	type element struct {
		Action string `json:"action"`
		IK     string `json:"ik"`
		Data   struct {
			TargetType string            `json:"targetType"`
			TargetID   string            `json:"targetId"`
			Metadata   map[string]string `json:"metadata"`
		} `json:"data"`
	}
	path := "/v2/" + url.PathEscape(p.ledger) + "/_bulk?continueOnFailure=true&parallel=true"
	return b.run(ctx, (n+size-1)/size, inFlight, func(ctx context.Context, j int) {
		els := make([]element, 0, size)
		for i := j * size; i < min(n, (j+1)*size); i++ {
			var el element
			addr, md, ik := p.balance("bulk", i)
			el.Action, el.IK = "ADD_METADATA", ik
			el.Data.TargetType, el.Data.TargetID, el.Data.Metadata = "ACCOUNT", addr, md
			els = append(els, el)
		}
		body, _ := json.Marshal(els)
		a := p.do(ctx, http.MethodPost, path, body, "")
		b.record(a)
		// 200: all applied; 400 with data: each element's own result.
		if a.status != http.StatusOK && a.status != http.StatusBadRequest {
			return
		}
		var out struct {
			Data []struct {
				ResponseType string `json:"responseType"`
			} `json:"data"`
		}
		if json.Unmarshal(a.body, &out) != nil {
			return
		}
		ok := 0
		for _, r := range out.Data {
			if r.ResponseType == "ADD_METADATA" {
				ok++
			}
		}
		b.created(min(ok, len(els)))
	})
}
