package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/internal/natsconn"
	"github.com/wallets-worker/wallets-worker/messages"
)

// deadLetter is one line of `dlq list`.
type deadLetter struct {
	Seq             uint64    `json:"seq"`
	Time            time.Time `json:"time"`
	Subject         string    `json:"subject"`
	Key             string    `json:"key"`
	Code            string    `json:"code"`
	Reason          string    `json:"reason"`
	OriginalSubject string    `json:"originalSubject"`
	OriginalSeq     uint64    `json:"originalSeq"`
	Deliveries      uint64    `json:"deliveries"`
}

func deadLetterOf(seq uint64, t time.Time, subject string, h nats.Header) deadLetter {
	oseq, _ := strconv.ParseUint(h.Get(messages.HeaderOriginalSeq), 10, 64)
	dels, _ := strconv.ParseUint(h.Get(messages.HeaderDeliveries), 10, 64)
	return deadLetter{
		Seq: seq, Time: t.UTC(), Subject: subject,
		Key:  h.Get(messages.HeaderMsgID),
		Code: h.Get(messages.HeaderDLQCode), Reason: h.Get(messages.HeaderDLQReason),
		OriginalSubject: h.Get(messages.HeaderOriginalSubject), OriginalSeq: oseq, Deliveries: dels,
	}
}

// dlqCommand runs `dlq list` and `dlq redrive`.
func dlqCommand(ctx context.Context, args []string, env Env) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "redrive") {
		return usageError("wallets-worker dlq list|redrive [flags]")
	}
	verb := args[0]
	fs := flag.NewFlagSet("dlq "+verb, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var (
		natsCfg  natsconn.Config
		seq      uint64
		all, del bool
		timeout  time.Duration
	)
	fs.StringVar(&natsCfg.URL, "nats-url", nats.DefaultURL, "NATS server URL(s), comma-separated")
	natsconn.Register(fs, &natsCfg)
	natsconn.RegisterInboxPrefix(fs, &natsCfg)
	fs.DurationVar(&timeout, "timeout", 30*time.Second, "overall timeout")
	if verb == "redrive" {
		fs.Uint64Var(&seq, "seq", 0, "dead letter to redrive, by its sequence in "+messages.StreamDLQ)
		fs.BoolVar(&all, "all", false, "redrive every dead letter")
		fs.BoolVar(&del, "delete", false, "delete each dead letter once its command is republished")
		fs.Usage = usage(fs, "wallets-worker dlq redrive (--seq N | --all) [flags]")
	} else {
		fs.Usage = usage(fs, "wallets-worker dlq list [flags]")
	}
	if err := parse(fs, args[1:], env.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError("%v", err)
	}
	if verb == "redrive" && (seq == 0) == !all {
		return usageError("dlq redrive takes exactly one of --seq N and --all")
	}
	if err := natsCfg.Validate(); err != nil {
		return usageError("%v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nc, err := natsconn.Connect(natsCfg, nats.Name("wallets-worker dlq"), nats.Timeout(min(timeout, 10*time.Second)))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	stream, err := js.Stream(ctx, messages.StreamDLQ)
	if err != nil {
		return fmt.Errorf("dead-letter stream %s: %w", messages.StreamDLQ, err)
	}
	out := json.NewEncoder(env.Stdout)

	if verb == "redrive" && !all {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			return fmt.Errorf("dead letter %d: %w", seq, err)
		}
		return redrive(ctx, js, stream, m, del, out)
	}
	return eachDeadLetter(ctx, js, stream, func(m *jetstream.RawStreamMsg) error {
		if verb == "list" {
			return out.Encode(deadLetterOf(m.Sequence, m.Time, m.Subject, m.Header))
		}
		return redrive(ctx, js, stream, m, del, out)
	})
}

// eachDeadLetter calls fn for every dead letter stored when it starts.
func eachDeadLetter(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, fn func(*jetstream.RawStreamMsg) error) error {
	info, err := stream.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // deleted
		}
		if err != nil {
			return fmt.Errorf("dead letter %d: %w", seq, err)
		}
		if err := fn(m); err != nil {
			return err
		}
	}
	return nil
}

type redriveResult struct {
	DLQSeq    uint64 `json:"dlqSeq"`
	Key       string `json:"key"`
	Subject   string `json:"subject"`
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate"`
	Deleted   bool   `json:"deleted"`
	// Skipped is set on a dead letter left where it is: its command is of a
	// kind this version does not know, which no worker of it would apply
	// (and which the operator's NATS user may not publish).
	Skipped bool   `json:"skipped,omitempty"`
	Note    string `json:"note,omitempty"`
}

// redrive republishes a dead letter's command with its original body, subject
// and key. A replay is a replay: a command that did reach the ledger ends as
// created (replayed), one that did not gets a new chance.
func redrive(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, m *jetstream.RawStreamMsg, del bool, out *json.Encoder) error {
	subject := m.Header.Get(messages.HeaderOriginalSubject)
	if !strings.HasPrefix(subject, strings.TrimSuffix(messages.SubjectConsumerFilter, ">")) {
		return fmt.Errorf("dead letter %d has no usable %s header", m.Sequence, messages.HeaderOriginalSubject)
	}
	if kind := messages.KindOfSubject(subject); !slices.Contains(allKinds(), kind) {
		return out.Encode(redriveResult{DLQSeq: m.Sequence, Key: m.Header.Get(messages.HeaderMsgID), Subject: subject, Skipped: true,
			Note: fmt.Sprintf("kind %q is not one this version knows (%s): not redriven; a worker that knows it must apply it", kind, strings.Join(allKinds(), ", "))})
	}
	cmd := &nats.Msg{Subject: subject, Data: m.Data, Header: nats.Header{}}
	for k, vs := range m.Header {
		switch k {
		case messages.HeaderDLQCode, messages.HeaderDLQReason, messages.HeaderOriginalSubject,
			messages.HeaderOriginalSeq, messages.HeaderDeliveries:
			continue
		}
		if strings.HasPrefix(k, "Nats-") && k != messages.HeaderMsgID {
			continue // server-set headers of the dead letter
		}
		cmd.Header[k] = append([]string(nil), vs...)
	}
	ack, err := js.PublishMsg(ctx, cmd, jetstream.WithExpectStream(messages.StreamCommands))
	if err != nil {
		return fmt.Errorf("redrive dead letter %d: %w", m.Sequence, err)
	}
	res := redriveResult{DLQSeq: m.Sequence, Key: cmd.Header.Get(messages.HeaderMsgID), Subject: subject, Seq: ack.Sequence, Duplicate: ack.Duplicate}
	if ack.Duplicate {
		res.Note = "JetStream still holds this key in the duplicate window of " + messages.StreamCommands + "; nothing was republished, try again once the window has passed"
	} else if del {
		if err := stream.DeleteMsg(ctx, m.Sequence); err != nil {
			return fmt.Errorf("delete dead letter %d: %w", m.Sequence, err)
		}
		res.Deleted = true
	}
	return out.Encode(res)
}
