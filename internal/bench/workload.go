package bench

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/wallets-worker/wallets-worker/messages"
)

// kind is what a published command is meant to exercise.
type kind uint8

const (
	// fresh creates a balance nobody commanded: GetAccount (absent), claim,
	// write.
	fresh kind = iota
	// duplicate republishes an earlier command, key and body: JetStream
	// drops it inside the duplicate window, so it is never stored.
	duplicate
	// conflict commands an earlier fresh balance with a new key:
	// ALREADY_EXISTS.
	conflict
	// replay commands a balance the ledger already holds under the same key,
	// as the wallets service would have created it: a replayed outcome.
	replay
)

// item is one publish.
type item struct {
	kind kind
	key  string
	cmd  messages.CreateBalance
	body []byte
}

// workload is the publish sequence of a run.
type workload struct {
	items []item
	// stored are the indexes of the items JetStream should store (all but
	// duplicates), in publish order.
	stored []int
	// byKey maps the key of every stored item to its index in items.
	byKey  map[string]int
	counts [4]int // by kind
}

// counts of each kind for n publishes and the given ratios, rounded.
func kindCounts(n int, dup, conf, rep float64) (d, c, r, f int) {
	d = int(math.Round(float64(n) * dup))
	c = int(math.Round(float64(n) * conf))
	r = int(math.Round(float64(n) * rep))
	return d, c, r, n - d - c - r
}

// newWorkload builds n publishes. The first is always fresh, so that every
// duplicate and conflict has an earlier command to repeat; the others are
// shuffled with seed, and a duplicate or a conflict picks its original at
// random among the earlier ones.
func newWorkload(n int, dup, conf, rep float64, seed uint64) (*workload, error) {
	d, c, r, f := kindCounts(n, dup, conf, rep)
	if f < 0 || (f == 0 && d+c > 0) {
		return nil, fmt.Errorf("duplicates %d + conflicts %d + replays %d leave no fresh command out of %d", d, c, r, n)
	}
	kinds := make([]kind, 0, n)
	for k, m := range [...]int{fresh: f, duplicate: d, conflict: c, replay: r} {
		for range m {
			kinds = append(kinds, kind(k))
		}
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	for i, k := range kinds {
		if k == fresh {
			kinds[0], kinds[i] = kinds[i], kinds[0]
			break
		}
	}

	w := &workload{items: make([]item, n), byKey: make(map[string]int, n)}
	var freshIdx, storedIdx []int
	for i, k := range kinds {
		it := item{kind: k}
		switch k {
		case fresh, replay:
			it.key = fmt.Sprintf("bench-key-%07d", i)
			it.cmd = messages.CreateBalance{WalletID: fmt.Sprintf("bench-wallet-%07d", i), Name: "savings", Priority: int64(i % 5)}
		case duplicate:
			it = w.items[storedIdx[rng.IntN(len(storedIdx))]]
			it.kind = duplicate
		case conflict:
			orig := w.items[freshIdx[rng.IntN(len(freshIdx))]]
			it.key = fmt.Sprintf("bench-key-%07d", i)
			it.cmd = orig.cmd
		}
		if it.body == nil {
			body, err := it.cmd.Encode()
			if err != nil {
				return nil, fmt.Errorf("command %d: %w", i, err)
			}
			it.body = body
		}
		w.items[i] = it
		w.counts[k]++
		if k == fresh {
			freshIdx = append(freshIdx, i)
		}
		if k != duplicate {
			storedIdx = append(storedIdx, i)
			w.stored = append(w.stored, i)
			w.byKey[it.key] = i
		}
	}
	return w, nil
}

// claims reports whether the command of key is one the worker claims a
// balance for: a fresh one (a replay finds its balance, a conflict finds the
// fresh one's).
func (w *workload) claims(key string) bool {
	i, ok := w.byKey[key]
	return ok && w.items[i].kind == fresh
}

// freshStored counts the fresh commands among the stored ones.
func (w *workload) freshStored() int {
	n := 0
	for _, i := range w.stored {
		if w.items[i].kind == fresh {
			n++
		}
	}
	return n
}
