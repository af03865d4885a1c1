package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// command is one CreateBalance command as a producer publishes it.
type command struct {
	Key       string
	WalletID  string
	Name      string
	Priority  int64
	ExpiresAt *time.Time
	// Invalid adds a field SPEC §3 does not know: INVALID_COMMAND.
	Invalid bool
}

// msg is the command as a NATS message (SPEC §3), a new one for each attempt.
func (c command) msg() *nats.Msg {
	b, err := json.Marshal(struct {
		WalletID  string     `json:"walletID"`
		Name      string     `json:"name"`
		Priority  int64      `json:"priority"`
		ExpiresAt *time.Time `json:"expiresAt"`
		Colour    string     `json:"colour,omitempty"`
	}{c.WalletID, c.Name, c.Priority, c.ExpiresAt, map[bool]string{true: "red"}[c.Invalid]})
	if err != nil {
		panic(err)
	}
	m := &nats.Msg{Subject: subjectCommandPrefix + c.WalletID, Data: b, Header: nats.Header{}}
	m.Header.Set(headerMsgID, c.Key)
	return m
}

// account is the balance's ledger address (SPEC §4), without a prefix.
func (c command) account() string {
	return strings.ReplaceAll("wallets:"+c.WalletID+":"+c.Name, "-", "")
}

// balancePlan is one balance and every key commanded for it.
type balancePlan struct {
	account string
	// keys[0] must create the balance and every other key get
	// ALREADY_EXISTS, unless racing: then the keys are published together
	// for a fresh balance and the claims let exactly one of them create it.
	keys   []string
	racing bool
}

// plan is the load of the test.
//
//   - primaries: one key per fresh balance;
//   - immediate duplicates: a primary published again right after itself;
//   - racing pairs: two keys for one fresh balance published back to back;
//   - invalid commands, dead-lettered as INVALID_COMMAND;
//   - conflicting keys for balances published before the loss, each published
//     once its balance is written (ALREADY_EXISTS), and later duplicates of
//     primaries, published once the primary's balance is written.
//
// The first three kinds and the invalid commands make up phase1, interleaved;
// the last two make up tail, published after phase1.
type plan struct {
	phase1, tail []command
	byKey        map[string]command
	balances     []*balancePlan
	invalid      map[string]bool
}

func (p plan) publishes() int { return len(p.phase1) + len(p.tail) }

func makePlan(rng *rand.Rand, n int) plan {
	const invalid = 5
	races := max(2, n/100)
	conflicts := n * 4 / 100
	dupNow := n * 3 / 100
	dupLater := n * 3 / 100
	primaries := n - invalid - 2*races - conflicts - dupNow - dupLater
	prefix := fmt.Sprintf("cl%05d", rng.Uint32()%100000)
	wallets := max(1, primaries/5)
	pl := plan{byKey: map[string]command{}, invalid: map[string]bool{}}

	prim := make([]command, primaries)
	balanceOf := map[string]*balancePlan{}
	for i := range primaries {
		c := command{
			Key:      fmt.Sprintf("%s/key %04d", prefix, i), // printable punctuation, as producers send
			WalletID: fmt.Sprintf("%s-w%03d", prefix, i%wallets),
			Name:     fmt.Sprintf("b%d", i/wallets),
			Priority: int64(i % 5),
		}
		if i%3 == 0 {
			exp := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second)
			c.ExpiresAt = &exp
		}
		prim[i] = c
		pl.byKey[c.Key] = c
		b := &balancePlan{account: c.account(), keys: []string{c.Key}}
		pl.balances = append(pl.balances, b)
		balanceOf[b.account] = b
	}
	now := map[int]bool{}
	for _, i := range rng.Perm(primaries)[:dupNow] {
		now[i] = true
	}
	for i, c := range prim {
		pl.phase1 = append(pl.phase1, c)
		if now[i] {
			pl.phase1 = append(pl.phase1, c)
		}
	}
	for r := range races {
		a := command{Key: fmt.Sprintf("%s/race %02d/a", prefix, r), WalletID: fmt.Sprintf("%s-race%02d", prefix, r), Name: "shared", Priority: 1}
		b := a
		b.Key, b.Priority = fmt.Sprintf("%s/race %02d/b", prefix, r), 2
		pl.byKey[a.Key], pl.byKey[b.Key] = a, b
		pl.balances = append(pl.balances, &balancePlan{account: a.account(), keys: []string{a.Key, b.Key}, racing: true})
		pl.phase1 = slices.Insert(pl.phase1, rng.IntN(len(pl.phase1)+1), a, b)
	}
	for k := range invalid {
		c := command{Key: fmt.Sprintf("%s/invalid %d", prefix, k), WalletID: prefix + "-bad", Name: fmt.Sprintf("x%d", k), Invalid: true}
		pl.byKey[c.Key] = c
		pl.invalid[c.Key] = true
		pl.phase1 = slices.Insert(pl.phase1, rng.IntN(len(pl.phase1)+1), c)
	}

	type later struct {
		primary int
		c       command
	}
	var tail []later
	early := max(conflicts, primaries*3/10) // published before the loss
	for _, i := range rng.Perm(early)[:conflicts] {
		first := prim[i]
		c := first
		c.Key, c.Priority, c.ExpiresAt = first.Key+"/conflict", first.Priority+10, nil
		pl.byKey[c.Key] = c
		b := balanceOf[first.account()]
		b.keys = append(b.keys, c.Key)
		tail = append(tail, later{i, c})
	}
	for _, i := range rng.Perm(primaries)[:dupLater] {
		tail = append(tail, later{i, prim[i]})
	}
	slices.SortStableFunc(tail, func(a, b later) int { return cmp.Compare(a.primary, b.primary) })
	for _, l := range tail {
		pl.tail = append(pl.tail, l.c)
	}
	return pl
}

// publisher publishes commands, retrying failed attempts with the same key,
// and records the sequences JetStream acknowledged.
type publisher struct {
	js jetstream.JetStream

	mu         sync.Mutex
	keyOf      map[uint64]string   // acknowledged sequence → key
	seqsOf     map[string][]uint64 // key → its acknowledged sequences
	duplicates int                 // PubAcks marked duplicate
	retries    int                 // attempts that failed and were tried again
	clashes    []string            // a sequence acknowledged for two keys
}

func newPublisher(js jetstream.JetStream) *publisher {
	return &publisher{js: js, keyOf: map[uint64]string{}, seqsOf: map[string][]uint64{}}
}

// publish stores c, retrying with a bounded backoff while JetStream cannot
// answer (a leader election). An attempt that failed may still have stored
// the command: the retry carries the same key, so JetStream answers it as a
// duplicate with the stored sequence.
func (p *publisher) publish(ctx context.Context, c command) error {
	wait := 50 * time.Millisecond
	deadline := time.Now().Add(publishBudget)
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, publishTry)
		ack, err := p.js.PublishMsg(actx, c.msg())
		cancel()
		if err == nil && (ack.Stream != streamCommands || ack.Sequence == 0) {
			err = fmt.Errorf("unexpected PubAck %+v", *ack)
		}
		if err == nil {
			p.record(c.Key, ack)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("publish %q: gave up after %d attempts in %s: %w", c.Key, attempt, publishBudget, err)
		}
		p.mu.Lock()
		p.retries++
		p.mu.Unlock()
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
		wait = min(2*wait, time.Second)
	}
}

func (p *publisher) record(key string, ack *jetstream.PubAck) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ack.Duplicate {
		p.duplicates++
	}
	if k, ok := p.keyOf[ack.Sequence]; ok {
		if k != key {
			p.clashes = append(p.clashes, fmt.Sprintf("sequence %d acknowledged for %q and %q", ack.Sequence, k, key))
		}
		return
	}
	p.keyOf[ack.Sequence] = key
	p.seqsOf[key] = append(p.seqsOf[key], ack.Sequence)
}

func (p *publisher) storedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.keyOf)
}
