package embeddedledger_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
)

// probeFile and txProbeFile hold what a real Formance Ledger v2.4.12
// answered to the probes of account metadata, bulks and logs, and of
// transactions (testdata/README.md says where they come from and their
// format).
const (
	probeFile    = "testdata/ledger-v2-probes.jsonl"
	txProbeFile  = "testdata/ledger-v2-tx-probes.jsonl"
	mdDryRunFile = "testdata/ledger-v2-md-dryrun-probes.jsonl"
)

type probeLine struct {
	Ledger string `json:"ledger"`
	Probe  struct {
		Name       string            `json:"name"`
		Method     string            `json:"method"`
		Path       string            `json:"path"`
		Headers    map[string]string `json:"headers"`
		Body       *string           `json:"body"`
		Concurrent int               `json:"concurrent"`
	} `json:"probe"`
	Real []recordedAnswer `json:"real"`
}

type recordedAnswer struct {
	Status         int    `json:"status"`
	ErrorCode      string `json:"errorCode"`
	IdempotencyHit string `json:"idempotencyHit"`
	Shape          string `json:"shape"`
	Body           string `json:"body"`
}

// verdict is what the replay compares of one answer. elements is the
// per-element outcome of a bulk ("ADD_METADATA", "ERROR/VALIDATION", ...),
// which the shape alone does not show beyond the first element.
type verdict struct {
	status    int
	errorCode string
	hit       string
	shape     string
	elements  string
	// detail is, for the transaction probes, the whole body but what
	// changes from run to run (see detailOf): ids, postings, amounts,
	// volumes, metadata, cursors' presence.
	detail string
}

func (v verdict) String() string {
	s := fmt.Sprintf("%d", v.status)
	if v.errorCode != "" {
		s += " " + v.errorCode
	}
	if v.hit != "" {
		s += " hit=" + v.hit
	}
	s += fmt.Sprintf(" shape=%q", v.shape)
	if v.elements != "" {
		s += " elements=" + v.elements
	}
	if v.detail != "" {
		s += " detail=" + v.detail
	}
	return s
}

// applied reports whether the answer says the write was applied now: a
// success that is not an idempotency hit.
func (v verdict) applied() bool { return v.status/100 == 2 && v.hit == "" }

func verdictOf(status int, hit string, body []byte) verdict {
	v := verdict{status: status, hit: hit, shape: shape(body)}
	var obj map[string]any
	if json.Unmarshal(body, &obj) == nil {
		v.errorCode, _ = obj["errorCode"].(string)
		if data, ok := obj["data"].([]any); ok {
			var parts []string
			for _, e := range data {
				el, _ := e.(map[string]any)
				rt, _ := el["responseType"].(string)
				if code, _ := el["errorCode"].(string); code != "" {
					rt += "/" + code
				}
				parts = append(parts, rt)
			}
			v.elements = strings.Join(parts, ",")
		}
	}
	return v
}

// shape renders a body's JSON structure in the transcript's notation
// (testdata/README.md): "" for an empty body, "text" for one that is not a
// single JSON value, s/n/b for scalars, objects with sorted keys, arrays by
// their first element, objects under a "metadata" key as key=value pairs.
// null, which no recorded answer holds, is "null".
func shape(body []byte) string {
	if len(bytes.TrimSpace(body)) == 0 {
		return ""
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "text"
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return "text" // something after the first value, as in "404 page not found"
	}
	return shapeOf(v, "")
}

func shapeOf(v any, key string) string {
	switch x := v.(type) {
	case map[string]any:
		keys := slices.Sorted(maps.Keys(x))
		parts := make([]string, len(keys))
		for i, k := range keys {
			if key == "metadata" {
				parts[i] = fmt.Sprintf("%s=%v", k, x[k])
			} else {
				parts[i] = k + ":" + shapeOf(x[k], k)
			}
		}
		return "{" + strings.Join(parts, ",") + "}"
	case []any:
		if len(x) == 0 {
			return "[]"
		}
		return "[" + shapeOf(x[0], "") + "]"
	case string:
		return "s"
	case json.Number:
		return "n"
	case bool:
		return "b"
	case nil:
		return "null"
	}
	panic(fmt.Sprintf("shape of %T", v))
}

// volatile are the keys whose values change from run to run or are not
// compared (see FIDELITY.md): dates, messages, cursors, and the effective
// volumes, which follow the effective date the embedded ledger does not
// order by.
var volatile = map[string]bool{
	"timestamp": true, "insertedAt": true, "updatedAt": true, "firstUsage": true, "insertionDate": true,
	"errorMessage": true, "errorDescription": true, "details": true, "next": true, "previous": true,
	"postCommitEffectiveVolumes": true, "preCommitEffectiveVolumes": true,
	// Log ids: the real ledger's log sequence, like its transaction one,
	// also moves for writes it rolls back.
	"logID": true,
}

// detailOf renders body as canonical JSON without the volatile keys; ""
// for a body that is not JSON.
func detailOf(body []byte) string {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return ""
	}
	var strip func(any) any
	strip = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			out := map[string]any{}
			for k, e := range x {
				if !volatile[k] {
					out[k] = strip(e)
				}
			}
			return out
		case []any:
			out := make([]any, len(x))
			for i, e := range x {
				out[i] = strip(e)
			}
			return out
		}
		return v
	}
	b, err := json.Marshal(strip(v))
	if err != nil {
		panic(err)
	}
	return string(b)
}

func TestShapeNotation(t *testing.T) {
	t.Parallel()
	for body, want := range map[string]string{
		``:                               ``,
		"404 page not found\n":           `text`,
		`{"b":true,"a":[1],"c":[]}`:      `{a:[n],b:b,c:[]}`,
		`{"data":[{"x":"1"},{"y":2}]}`:   `{data:[{x:s}]}`,
		`{"metadata":{"z":"3","x":"1"}}`: `{metadata:{x=1,z=3}}`,
		`{"metadata":{}}`:                `{metadata:{}}`,
		`{"n":null}`:                     `{n:null}`,
	} {
		require.Equal(t, want, shape([]byte(body)), "body %q", body)
	}
}

// knownDifference is a probe the embedded ledger answers otherwise than the
// real one, on purpose; the replay then requires the embedded answer to
// have exactly this status and error code, so that the difference stays
// what FIDELITY.md says.
type knownDifference struct {
	status    int
	errorCode string
	reason    string
}

// knownDifferences is FIDELITY.md's table, by probe name. Those of the
// transaction probes come from the Numscript interpreter, which differs
// from the machine inside ledger v2.4.12 (see FIDELITY.md).
var knownDifferences = map[string]knownDifference{
	"confirm hold 1 final with amount 0, already emptied": {400, "NO_POSTINGS", zeroPostings},
	"void hold 2 again, already emptied":                  {400, "NO_POSTINGS", zeroPostings},
	"numscript send [USD/2 0]":                            {400, "NO_POSTINGS", zeroPostings},
	"list transactions pageSize=5":                        {200, "", "the page holds the zero-posting transactions of the three probes above, which the embedded ledger refused"},
}

const zeroPostings = "the Numscript interpreter leaves out postings of zero, so a script that moves nothing has no postings; the real ledger's machine makes a transaction of zero postings"

// TestFidelity replays every recorded probe, in file order, on a fresh
// file-backed embedded ledger served over real HTTP, and compares each
// answer's status, error code, Idempotency-Hit header, body shape and bulk
// element outcomes with the real ledger's.
//
// A probe sent as n concurrent copies is compared as a distribution, since
// which copy wins is a race. The rule: the embedded ledger gives n answers;
// exactly as many of them apply the write (a success without
// Idempotency-Hit) as the real ledger's did, since one key applies once
// however the race goes; and every other answer is one the real ledger also
// gave to that probe (same status, code, hit and shape). How the losers
// split between those answers (Idempotency-Hit or 500 INTERNAL for racing
// first writes) depends on timing in both ledgers, so any split passes;
// the real ledger itself gave 4 hits and 7 errors in one run, 1 and 10 in
// the recorded one. TestRacingFirstWrites forces each loser's answer.
//
// It runs over TCP and again through Ledger.Transport, which must answer
// the same.
func TestFidelity(t *testing.T) {
	t.Parallel()
	replayBothWays(t, probeFile, 46, false)
}

// TestFidelityTransactions replays the transaction probes as TestFidelity
// replays the others, and compares more: every answer's whole body but its
// volatile keys (detailOf), so the postings, ids, metadata and volumes
// after each write must be the real ones.
func TestFidelityTransactions(t *testing.T) {
	t.Parallel()
	replayBothWays(t, txProbeFile, 100, true)
}

// TestFidelityMetadataDryRuns replays the dry runs of account-metadata
// writes, whose idempotency hit is how a worker past its retry budget finds
// an update-wallet its last delivery made: the key's hit on the same body,
// its conflict on another, nothing written and the key not taken otherwise.
func TestFidelityMetadataDryRuns(t *testing.T) {
	t.Parallel()
	replayBothWays(t, mdDryRunFile, 15, true)
}

// replayBothWays replays the transcript in file, which holds n probes, over
// TCP and through Ledger.Transport.
func replayBothWays(t *testing.T, file string, n int, detailed bool) {
	t.Helper()
	probes := readProbes(t, file)
	require.Len(t, probes, n, "the recorded transcript has %d probes", n)
	for _, inProcess := range []bool{false, true} {
		t.Run(map[bool]string{false: "tcp", true: "in-process"}[inProcess], func(t *testing.T) {
			t.Parallel()
			replay(t, probes, inProcess, detailed)
		})
	}
}

func replay(t *testing.T, probes []probeLine, inProcess, detailed bool) {
	l, err := embeddedledger.Open(t.TempDir())
	require.NoError(t, err)
	// entered receives once per request, when its handler starts (the body
	// may still be on its way).
	entered := make(chan struct{}, 64)
	h := l.Handler()
	wrapped := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		h.ServeHTTP(w, r)
	})
	const name = "fidelity"
	var client *http.Client
	base := "http://embedded"
	if inProcess {
		client = &http.Client{Transport: embeddedledger.HandlerTransport(wrapped)}
		t.Cleanup(func() { require.NoError(t, l.Close()) })
	} else {
		srv := httptest.NewServer(wrapped)
		t.Cleanup(func() {
			srv.Close()
			require.NoError(t, l.Close())
		})
		base = srv.URL
		// A client keeping a connection per concurrent copy, as a client
		// pool does: copies that must first dial arrive one by one, and the
		// race probe would then mostly measure connection set-up.
		client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
		t.Cleanup(client.CloseIdleConnections)
	}

	var report []string
	for i, p := range probes {
		n := max(p.Probe.Concurrent, 1)
		require.Len(t, p.Real, n, "probe %d %q: one recorded answer per copy", i+1, p.Probe.Name)
		// Concurrent copies are compared without detail: which copy got
		// which transaction id is a race.
		detail := detailed && n == 1
		real := make([]verdict, n)
		for j, a := range p.Real {
			real[j] = verdictOf(a.Status, a.IdempotencyHit, []byte(a.Body))
			if detail {
				real[j].detail = detailOf([]byte(a.Body))
			}
			// The replay's shape function must read the recording as the
			// recorder did.
			require.Equal(t, a.Shape, real[j].shape, "probe %d %q: recorded shape", i+1, p.Probe.Name)
			require.Equal(t, a.ErrorCode, real[j].errorCode, "probe %d %q: recorded error code", i+1, p.Probe.Name)
		}
		if n > 1 && !inProcess {
			warm(t, client, base, n)
			for range n {
				<-entered
			}
		}
		got := sendProbe(t, client, base, entered, p, strings.ReplaceAll(p.Probe.Path, p.Ledger, name), name, n, detail)

		label := fmt.Sprintf("probe %d %q", i+1, p.Probe.Name)
		if kd, ok := knownDifferences[p.Probe.Name]; ok {
			require.Equal(t, 1, n, "%s: known differences are single probes", label)
			want := verdict{status: kd.status, errorCode: kd.errorCode}
			have := verdict{status: got[0].status, errorCode: got[0].errorCode}
			require.NotEqual(t, real[0], got[0], "%s: listed as a known difference but the answer is the real one", label)
			require.Equal(t, want, have, "%s: known difference (%s) changed; real: %s", label, kd.reason, real[0])
			report = append(report, fmt.Sprintf("%-45s known difference: %s (real %s)", label, got[0], real[0]))
			continue
		}
		if n == 1 {
			assert.Equal(t, real[0], got[0], label)
			report = append(report, fmt.Sprintf("%-45s match: %s", label, got[0]))
			continue
		}
		require.NoError(t, sameDistribution(real, got), "%s: real %s, embedded %s", label, counts(real), counts(got))
		report = append(report, fmt.Sprintf("%-45s match: real %s, embedded %s", label, counts(real), counts(got)))
	}
	t.Logf("replay of %d probes:\n%s", len(probes), strings.Join(report, "\n"))
}

func readProbes(t *testing.T, file string) []probeLine {
	t.Helper()
	f, err := os.Open(file)
	require.NoError(t, err)
	defer f.Close()
	var probes []probeLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var p probeLine
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		require.NoError(t, dec.Decode(&p), "line %d", len(probes)+1)
		probes = append(probes, p)
	}
	require.NoError(t, sc.Err())
	return probes
}

// sendProbe sends n copies of the probe at once and returns their verdicts.
// Concurrent copies are sent at once in the server's sense: every copy's
// request line and headers have reached the server before any copy's body
// is sent, so that none of them can be done before the last one starts
// (on two cores, copies sent one after another by the client are otherwise
// spread over more time than one embedded write takes).
func sendProbe(t *testing.T, client *http.Client, base string, entered <-chan struct{}, p probeLine, path, ledger string, n int, detail bool) []verdict {
	t.Helper()
	got := make([]verdict, n)
	errs := make([]error, n)
	bodies := make([]*io.PipeWriter, n)
	var wg sync.WaitGroup
	for i := range n {
		var body io.Reader
		if p.Probe.Body != nil {
			r, w := io.Pipe()
			body, bodies[i] = r, w
		}
		req, err := http.NewRequest(p.Probe.Method, base+path, body)
		require.NoError(t, err)
		for k, v := range p.Probe.Headers {
			req.Header.Set(k, v)
		}
		wg.Go(func() {
			resp, err := client.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			raw, err := io.ReadAll(resp.Body)
			if err != nil {
				errs[i] = err
				return
			}
			got[i] = verdictOf(resp.StatusCode, resp.Header.Get("Idempotency-Hit"), raw)
			if detail {
				got[i].detail = detailOf(bytes.ReplaceAll(raw, []byte(ledger), []byte(p.Ledger)))
			}
		})
	}
	for range n {
		<-entered
	}
	if p.Probe.Body != nil {
		b := []byte(strings.ReplaceAll(*p.Probe.Body, p.Ledger, ledger))
		for _, w := range bodies {
			_, err := w.Write(b)
			if errors.Is(err, io.ErrClosedPipe) {
				err = nil // answered without reading its body (in process)
			}
			require.NoError(t, errors.Join(err, w.Close()))
		}
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...), "probe %q", p.Probe.Name)
	return got
}

// warm opens n idle connections to base: n requests at once need as many.
func warm(t *testing.T, client *http.Client, base string, n int) {
	t.Helper()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			resp, err := client.Get(base + "/_healthcheck")
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				err = errors.Join(err, resp.Body.Close())
			}
			errs[i] = err
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
}

// sameDistribution is TestFidelity's rule for concurrent probes: as many
// answers, as many of them applying the write, and only answers the real
// ledger also gave.
func sameDistribution(real, got []verdict) error {
	if len(got) != len(real) {
		return fmt.Errorf("%d answers, want %d", len(got), len(real))
	}
	appliedReal, appliedGot := 0, 0
	for _, v := range real {
		if v.applied() {
			appliedReal++
		}
	}
	for _, v := range got {
		if v.applied() {
			appliedGot++
		}
		if !slices.Contains(real, v) {
			return fmt.Errorf("an answer the real ledger did not give: %s", v)
		}
	}
	if appliedGot != appliedReal {
		return fmt.Errorf("%d answers applied the write, want %d", appliedGot, appliedReal)
	}
	return nil
}

func TestSameDistribution(t *testing.T) {
	t.Parallel()
	applied := verdict{status: 204}
	hit := verdict{status: 204, hit: "true"}
	internal := verdict{status: 500, errorCode: "INTERNAL", shape: "{errorCode:s,errorMessage:s}"}
	real := []verdict{internal, applied, internal, hit}

	require.NoError(t, sameDistribution(real, []verdict{applied, hit, hit, hit}), "any split of the losers")
	require.NoError(t, sameDistribution(real, []verdict{internal, internal, applied, internal}), "any split of the losers")
	require.Error(t, sameDistribution(real, []verdict{applied, applied, hit, hit}), "two writes applied")
	require.Error(t, sameDistribution(real, []verdict{hit, hit, hit, hit}), "none applied")
	require.Error(t, sameDistribution(real, []verdict{applied, hit, hit, {status: 400, errorCode: "VALIDATION"}}), "an answer never given")
	require.Error(t, sameDistribution(real, []verdict{applied, hit, hit}), "an answer missing")
}

// counts renders a distribution of answers as "1×204, 10×500 INTERNAL".
func counts(vs []verdict) string {
	n := map[string]int{}
	for _, v := range vs {
		k := fmt.Sprint(v.status)
		if v.errorCode != "" {
			k += " " + v.errorCode
		}
		if v.hit != "" {
			k += " hit"
		}
		n[k]++
	}
	keys := slices.Collect(maps.Keys(n))
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d×%s", n[k], k)
	}
	return strings.Join(parts, ", ")
}
