package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// received is one message read back from a stream.
type received struct {
	Subject string
	Header  nats.Header
	Data    []byte
	Seq     uint64
}

// waitStreamInfo reads a stream's info, waiting while the cluster cannot
// answer.
func waitStreamInfo(t *testing.T, js jetstream.JetStream, stream string) *jetstream.StreamInfo {
	t.Helper()
	var si *jetstream.StreamInfo
	eventually(t, waitFor, "the info of "+stream, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		si, err = streamInfo(ctx, js, stream)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	return si
}

// readStream reads every message of a stream, one message get per sequence
// from its first to its last: each get is answered by the stream's leader,
// and needs no consumer. (An ordered consumer, right after the loss of a
// leader, once delivered none of the five messages of a stream for a whole
// minute, while the stream's info counted them.)
func readStream(t *testing.T, js jetstream.JetStream, stream string) []received {
	t.Helper()
	var s jetstream.Stream
	eventually(t, waitFor, "the stream "+stream, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		if s, err = js.Stream(ctx, stream); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	si := s.CachedInfo() // as the leader reported it just now
	if si.State.Msgs == 0 {
		return nil
	}
	var out []received
	for seq := si.State.FirstSeq; seq <= si.State.LastSeq; seq++ {
		var m *jetstream.RawStreamMsg
		gone := false
		eventually(t, waitFor, fmt.Sprintf("message %d of %s", seq, stream), func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var err error
			m, err = s.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				gone = true // deleted: not part of the stream's count
				return true, ""
			}
			if err != nil {
				return false, err.Error()
			}
			return true, ""
		})
		if !gone {
			out = append(out, received{Subject: m.Subject, Header: m.Header, Data: m.Data, Seq: m.Sequence})
		}
	}
	require.Len(t, out, int(si.State.Msgs), "messages read from %s", stream)
	return out
}

// ---- checks ----

// problems collects what a check found, and reports it at once.
type problems struct {
	t    testing.TB
	what string
	list []string
}

func (p *problems) add(format string, args ...any) {
	p.list = append(p.list, fmt.Sprintf(format, args...))
}

func (p *problems) report() {
	p.t.Helper()
	if len(p.list) == 0 {
		return
	}
	shown := p.list
	if len(shown) > 30 {
		shown = append(slices.Clone(shown[:30]), fmt.Sprintf("[... %d more]", len(p.list)-30))
	}
	p.t.Errorf("%s: %d problems:\n  %s", p.what, len(p.list), strings.Join(shown, "\n  "))
}

type createdBody struct {
	Key      string `json:"key"`
	WalletID string `json:"walletID"`
	Balance  struct {
		Name      string     `json:"name"`
		Priority  int64      `json:"priority"`
		ExpiresAt *time.Time `json:"expiresAt"`
	} `json:"balance"`
	Ledger   string `json:"ledger"`
	Account  string `json:"account"`
	Replayed bool   `json:"replayed"`
}

type rejectedBody struct {
	Key      string `json:"key"`
	WalletID string `json:"walletID"`
	Name     string `json:"name"`
	Code     string `json:"code"`
	Message  string `json:"message"`
}

// outcome is one outcome event.
type outcome struct {
	eventSeq, cmdSeq uint64
	key, msgID       string
	created          *createdBody
	rejected         *rejectedBody
}

func parseOutcome(r received) (outcome, error) {
	o := outcome{eventSeq: r.Seq, key: r.Header.Get(headerCommandKey), msgID: r.Header.Get(headerMsgID)}
	seq, err := strconv.ParseUint(r.Header.Get(headerCommandSeq), 10, 64)
	if err != nil {
		return o, fmt.Errorf("%s header: %w", headerCommandSeq, err)
	}
	o.cmdSeq = seq
	switch {
	case strings.HasPrefix(r.Subject, subjectCreatedPrefix):
		o.created = &createdBody{}
		err = json.Unmarshal(r.Data, o.created)
	case strings.HasPrefix(r.Subject, subjectRejectedPrefix):
		o.rejected = &rejectedBody{}
		err = json.Unmarshal(r.Data, o.rejected)
	default:
		err = fmt.Errorf("unexpected subject %s", r.Subject)
	}
	return o, err
}

func (o outcome) String() string {
	if o.created != nil {
		return fmt.Sprintf("created (replayed=%v)", o.created.Replayed)
	}
	return fmt.Sprintf("rejected %s (%s)", o.rejected.Code, o.rejected.Message)
}

// figures is what verifyOutcomes counted.
type figures struct {
	stored   int // distinct acknowledged sequences
	unacked  int // sequences stored by an attempt that failed, found from their events
	outcomes int
	lost     int
	doubled  int

	created, replayed, alreadyExists, deadLetters int

	seqsOf  map[string][]uint64 // key → stored sequences, unacknowledged included
	winners map[string]string   // account → the key that created it
}

// verifyOutcomes checks that every stored command has exactly one outcome
// event with the headers of SPEC §3, that no sequence up to lastSeq of
// WALLETS_COMMANDS is unaccounted for, and that each balance was created by
// one key while every other key for it got ALREADY_EXISTS.
func verifyOutcomes(p *problems, pl plan, pub *publisher, events []received, lastSeq uint64) figures {
	pub.mu.Lock()
	defer pub.mu.Unlock()
	for _, c := range pub.clashes {
		p.add("%s", c)
	}
	f := figures{stored: len(pub.keyOf), outcomes: len(events), seqsOf: map[string][]uint64{}, winners: map[string]string{}}
	stored := map[uint64]string{}
	for seq, key := range pub.keyOf {
		stored[seq] = key
		f.seqsOf[key] = append(f.seqsOf[key], seq)
	}

	bySeq := map[uint64][]outcome{}
	for _, r := range events {
		o, err := parseOutcome(r)
		if err != nil {
			p.add("event %d on %s: %v", r.Seq, r.Subject, err)
			continue
		}
		bySeq[o.cmdSeq] = append(bySeq[o.cmdSeq], o)
	}
	// A publish attempt that failed may have stored its command under a
	// sequence no PubAck reported (the retry then stored it again, where
	// deduplication did not hold): its event names a planned key.
	for seq, os := range bySeq {
		if _, ok := stored[seq]; ok {
			continue
		}
		if _, planned := pl.byKey[os[0].key]; !planned {
			p.add("events %v name command sequence %d and key %q, which nobody published", os, seq, os[0].key)
			continue
		}
		f.unacked++
		stored[seq] = os[0].key
		f.seqsOf[os[0].key] = append(f.seqsOf[os[0].key], seq)
	}
	for seq, key := range stored {
		os := bySeq[seq]
		switch n := len(os); {
		case n == 0:
			f.lost++
			p.add("command %d (key %q) has no outcome event", seq, key)
		case n > 1:
			f.doubled += n - 1
			p.add("command %d (key %q) has %d outcome events: %v", seq, key, n, os)
		}
		for _, o := range os {
			if o.key != key {
				p.add("event %d for command %d: %s %q, want %q", o.eventSeq, seq, headerCommandKey, o.key, key)
			}
			if want := key + ":" + strconv.FormatUint(seq, 10); o.msgID != want {
				p.add("event %d: %s %q, want %q", o.eventSeq, headerMsgID, o.msgID, want)
			}
		}
	}
	// Sequences are given to stored messages only: a hole is a command
	// stored by an attempt that failed and then lost without an outcome.
	for seq := uint64(1); seq <= lastSeq; seq++ {
		if _, ok := stored[seq]; !ok {
			f.lost++
			p.add("command %d was stored (%s reached sequence %d) but has neither a PubAck nor an outcome", seq, streamCommands, lastSeq)
		}
	}
	for key := range pl.byKey {
		if len(f.seqsOf[key]) == 0 {
			p.add("key %q was never stored", key)
		}
	}

	outcomesOf := func(key string) []outcome {
		var out []outcome
		for _, seq := range f.seqsOf[key] {
			out = append(out, bySeq[seq]...)
		}
		return out
	}
	for _, b := range pl.balances {
		winner := b.keys[0]
		if b.racing {
			var creators []string
			for _, k := range b.keys {
				if slices.ContainsFunc(outcomesOf(k), func(o outcome) bool { return o.created != nil }) {
					creators = append(creators, k)
				}
			}
			if len(creators) != 1 {
				p.add("racing keys %q for %s: %d of them created it (%q), want exactly 1", b.keys, b.account, len(creators), creators)
				continue
			}
			winner = creators[0]
		}
		f.winners[b.account] = winner
		fresh := 0
		for _, k := range b.keys {
			c := pl.byKey[k]
			for _, o := range outcomesOf(k) {
				if k != winner {
					if o.rejected == nil || o.rejected.Code != codeAlreadyExists {
						p.add("key %q for %s (command %d): %s, want %s", k, b.account, o.cmdSeq, o, codeAlreadyExists)
						continue
					}
					f.alreadyExists++
					if o.rejected.Key != k || o.rejected.WalletID != c.WalletID || o.rejected.Name != c.Name {
						p.add("rejection of %q names key %q wallet %q name %q", k, o.rejected.Key, o.rejected.WalletID, o.rejected.Name)
					}
					continue
				}
				if o.created == nil {
					p.add("key %q for %s (command %d): %s, want created", k, b.account, o.cmdSeq, o)
					continue
				}
				f.created++
				if o.created.Replayed {
					f.replayed++
				} else {
					fresh++
				}
				e := o.created
				if e.Key != k || e.WalletID != c.WalletID || e.Ledger != ledgerName || e.Account != b.account ||
					e.Balance.Name != c.Name || e.Balance.Priority != c.Priority || !sameTime(e.Balance.ExpiresAt, c.ExpiresAt) {
					p.add("created event %d for %q: %+v, want %+v on %s", o.eventSeq, k, *e, c, b.account)
				}
			}
		}
		if fresh > 1 {
			p.add("balance %s was created %d times (events not marked replayed)", b.account, fresh)
		}
	}
	for key := range pl.invalid {
		for _, o := range outcomesOf(key) {
			if o.rejected == nil || o.rejected.Code != codeInvalidCommand {
				p.add("invalid command %q (command %d): %s, want %s", key, o.cmdSeq, o, codeInvalidCommand)
			}
		}
	}
	return f
}

// verifyLedger checks that each balance has exactly one SET_METADATA log,
// carrying its winner's replay marker and no other key's, and that nothing
// else was written.
func verifyLedger(p *problems, c *ledgeradapter.Client, pl plan, winners map[string]string) {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	logs, err := c.AllLogs(ctx, ledgerName)
	if err != nil {
		p.add("read the ledger's logs: %v", err)
		return
	}
	perKey := map[string]int{}
	perAccount := map[string][]ledgeradapter.SetMetadataData{}
	for _, l := range logs {
		if perKey[l.IdempotencyKey]++; l.IdempotencyKey != "" && perKey[l.IdempotencyKey] == 2 {
			p.add("Idempotency-Key %q has more than one log", l.IdempotencyKey)
		}
		sm, err := l.SetMetadata()
		if err != nil || sm.TargetType != "ACCOUNT" {
			p.add("log %d is %s on %s, not account metadata (%v)", l.ID, l.Type, sm.TargetType, err)
			continue
		}
		perAccount[sm.TargetID] = append(perAccount[sm.TargetID], sm)
	}
	for _, b := range pl.balances {
		sms := perAccount[b.account]
		delete(perAccount, b.account)
		if len(sms) != 1 {
			p.add("account %s has %d SET_METADATA logs, want 1", b.account, len(sms))
			continue
		}
		winner, ok := winners[b.account]
		if !ok {
			continue // the outcomes named no single winner: reported there
		}
		md, w := sms[0].Metadata, pl.byKey[winner]
		if md["wallets/balances"] != "true" || md["wallets/id"] != w.WalletID || md["wallets/balances/name"] != w.Name ||
			md["wallets/balances/priority"] != strconv.FormatInt(w.Priority, 10) {
			p.add("the log of %s does not describe the balance of its winner %q: %v", b.account, winner, md)
		}
		for _, k := range b.keys {
			_, has := md[markerKey(k)]
			if has != (k == winner) {
				p.add("the log of %s: replay marker of %q present=%v, want %v (winner %q)", b.account, k, has, k == winner, winner)
			}
		}
	}
	for acct, sms := range perAccount {
		p.add("account %s was written %d times but no balance was planned there", acct, len(sms))
	}
}

// verifyDeadLetters checks that the dead letters are copies of the stored
// invalid commands, at least one of each, and returns how many there are and
// how many are second copies. The worker keeps WALLETS_DLQ's dedupe window
// short (worker/provision.go, dlqDuplicateWindow) so that a republished key's
// dead letter is kept; its price is a second copy when the event publish after
// a dead letter failed, as it may while the events stream elects a leader.
func verifyDeadLetters(p *problems, pl plan, seqsOf map[string][]uint64, dlq []received) (total, extra int) {
	want := map[uint64]string{}
	for key := range pl.invalid {
		for _, seq := range seqsOf[key] {
			want[seq] = key
		}
	}
	got := map[uint64]int{}
	for _, r := range dlq {
		key, code := r.Header.Get(headerMsgID), r.Header.Get(headerDLQCode)
		seq, err := strconv.ParseUint(r.Header.Get(headerOriginalSeq), 10, 64)
		if err != nil || want[seq] != key || code != codeInvalidCommand {
			p.add("unexpected dead letter %d: key %q, code %s, original sequence %q", r.Seq, key, code, r.Header.Get(headerOriginalSeq))
			continue
		}
		got[seq]++
	}
	for seq, key := range want {
		if got[seq] == 0 {
			p.add("invalid command %d (key %q) has no dead letter", seq, key)
		}
		extra += max(0, got[seq]-1)
	}
	return len(dlq), extra
}

// markerKey is the metadata key of key's replay marker (SPEC §4).
func markerKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return markerPrefix + hex.EncodeToString(sum[:])
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(*b)
}
