package bench

import (
	"context"
	"fmt"
	"io"
	"slices"
)

// UserRuns is the user workload run several times in a row, each run with
// its own `run` process (and, with a ledger URL, its own baselines right
// before it), and the spread of each figure across them: the figure that
// counts is the worst run, not the best (the least of a rate or a ratio,
// the most of the peak RSS).
type UserRuns struct {
	Runs    []UserResult `json:"runs"`
	Summary UserSummary  `json:"summary"`
}

// Spread is the least, the median and the most of one figure across runs.
type Spread struct {
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	Max    float64 `json:"max"`
}

// UserSummary is the spread of each figure of UserRuns, and the sums of
// what should be zero in every run.
type UserSummary struct {
	Runs            int    `json:"runs"`
	PerSecond       Spread `json:"perSecond"`
	ToRaw           Spread `json:"runToRawJetStream"`
	ToRawWithClaim  Spread `json:"runToRawJetStreamWithClaim"`
	ToBestWrite     Spread `json:"runToBestWrite"`
	ToReadThenWrite Spread `json:"runToReadThenWrite"`
	PeakRSSMiB      Spread `json:"peakRssMiB"`
	// FirstSecond is the outcomes of each run's first second.
	FirstSecond Spread `json:"firstSecond"`
	// The sums over every run of what a healthy run has none of.
	Replayed         int   `json:"replayed"`
	Rejected         int   `json:"rejected"`
	LedgerNoAnswer   int   `json:"ledgerNoAnswer"`
	Retries          int   `json:"retries"`
	BaselineTimeouts int64 `json:"baselineTimeouts"`
	// BaselineFailed counts the baselines' balances the ledger did not
	// create (they are not retried: each one lowers its baseline).
	BaselineFailed int `json:"baselineFailed"`
}

// spreadOf is the spread of vs (zero for none).
func spreadOf(vs []float64) Spread {
	if len(vs) == 0 {
		return Spread{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Spread{Min: s[0], Median: med, Max: s[len(s)-1]}
}

// summarize is the summary of runs.
func summarize(runs []UserResult) UserSummary {
	sum := UserSummary{Runs: len(runs)}
	var per, raw, rawClaim, best, rtw, rss, first []float64
	for _, r := range runs {
		per = append(per, r.Run.PerSec)
		raw = append(raw, r.ToRaw)
		rawClaim = append(rawClaim, r.ToRawWithClaim)
		rss = append(rss, r.Run.PeakRSSMiB)
		if len(r.Run.PerSecond) > 0 {
			first = append(first, float64(r.Run.PerSecond[0]))
		}
		if len(r.Baselines) > 0 {
			best = append(best, r.ToBestWrite)
			rtw = append(rtw, r.ToReadThenWrite)
		}
		sum.Replayed += r.Run.Replayed
		sum.Rejected += r.Run.Rejected
		sum.LedgerNoAnswer += r.Run.LedgerNoAnswer
		sum.Retries += r.Run.Retries
		for _, b := range r.Baselines {
			sum.BaselineTimeouts += b.Timeouts
			sum.BaselineFailed += b.Failed
		}
	}
	sum.PerSecond, sum.ToRaw, sum.ToRawWithClaim = spreadOf(per), spreadOf(raw), spreadOf(rawClaim)
	sum.ToBestWrite, sum.ToReadThenWrite = spreadOf(best), spreadOf(rtw)
	sum.PeakRSSMiB, sum.FirstSecond = spreadOf(rss), spreadOf(first)
	return sum
}

// RunUserRuns runs the user workload n times in a row; log, when not nil,
// gets a line per run as it ends. It stops at the first run that fails,
// returning the runs before it.
func RunUserRuns(ctx context.Context, cfg UserConfig, n int, log io.Writer) (UserRuns, error) {
	var out UserRuns
	for i := range n {
		res, err := RunUser(ctx, cfg)
		if err != nil {
			out.Summary = summarize(out.Runs)
			return out, fmt.Errorf("run %d of %d: %w", i+1, n, err)
		}
		out.Runs = append(out.Runs, res)
		if log != nil {
			fmt.Fprintf(log, "run %d of %d: %s\n", i+1, n, userLine(res))
		}
	}
	out.Summary = summarize(out.Runs)
	return out, nil
}

// firstSecond is the outcomes of r's first second (0 when it had none).
func firstSecond(r UserResult) int {
	if len(r.Run.PerSecond) == 0 {
		return 0
	}
	return r.Run.PerSecond[0]
}

// userLine is one run in a line.
func userLine(r UserResult) string {
	s := fmt.Sprintf("%.0f creates/s, ÷ raw %.2f, ÷ raw with a claim %.2f, peak RSS %.0f MiB, first second %d",
		r.Run.PerSec, r.ToRaw, r.ToRawWithClaim, r.Run.PeakRSSMiB, firstSecond(r))
	if len(r.Baselines) > 0 {
		s += fmt.Sprintf(", ÷ best write %.2f, ÷ GET then write %.2f", r.ToBestWrite, r.ToReadThenWrite)
	}
	return s
}

// printUserRuns prints runs as a table, one line a run, and the spread of
// each figure.
func printUserRuns(w io.Writer, runs UserRuns) {
	remote := runs.Summary.ToBestWrite.Max > 0
	fmt.Fprintf(w, "%-4s %10s %7s %11s %7s %9s %8s %12s %10s %8s\n", "run", "creates/s", "÷ best", "÷ GET+write",
		"÷ raw", "÷ raw+KV", "RSS MiB", "first second", "no answer", "replayed")
	for i, r := range runs.Runs {
		best, rtw := "-", "-"
		if len(r.Baselines) > 0 {
			best, rtw = fmt.Sprintf("%.2f", r.ToBestWrite), fmt.Sprintf("%.2f", r.ToReadThenWrite)
		}
		fmt.Fprintf(w, "%-4d %10.0f %7s %11s %7.2f %9.2f %8.0f %12d %10d %8d\n", i+1, r.Run.PerSec, best, rtw,
			r.ToRaw, r.ToRawWithClaim, r.Run.PeakRSSMiB, firstSecond(r), r.Run.LedgerNoAnswer, r.Run.Replayed)
	}
	s := runs.Summary
	fmt.Fprintf(w, "\nacross %d runs (min / median / max):\n", s.Runs)
	line := func(name string, sp Spread, format string) {
		fmt.Fprintf(w, "  %-36s "+format+" / "+format+" / "+format+"\n", name, sp.Min, sp.Median, sp.Max)
	}
	line("creates/s", s.PerSecond, "%.0f")
	if remote {
		line("run ÷ best write", s.ToBestWrite, "%.2f")
		line("run ÷ GET then write", s.ToReadThenWrite, "%.2f")
	}
	line("run ÷ raw JetStream", s.ToRaw, "%.2f")
	line("run ÷ raw JetStream with a claim", s.ToRawWithClaim, "%.2f")
	line("peak RSS, MiB", s.PeakRSSMiB, "%.0f")
	line("outcomes in the first second", s.FirstSecond, "%.0f")
	fmt.Fprintf(w, "  in all: %d replayed, %d rejected, %d ledger requests without an answer, %d retries, %d baseline timeouts, %d baseline balances not created\n",
		s.Replayed, s.Rejected, s.LedgerNoAnswer, s.Retries, s.BaselineTimeouts, s.BaselineFailed)
}
