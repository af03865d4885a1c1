package messages

// Streams, consumer and subjects (SPEC §3). Changing any of these breaks every
// producer and every deployed worker, so they are spelled out, not computed.
const (
	// StreamCommands holds the commands, of every kind, until a worker
	// settles them.
	StreamCommands = "WALLETS_COMMANDS"
	// StreamEvents holds outcome events.
	StreamEvents = "WALLETS_EVENTS"
	// StreamDLQ holds dead letters.
	StreamDLQ = "WALLETS_DLQ"

	// ConsumerName is the durable pull consumer shared by every worker process.
	ConsumerName = "wallets-worker"

	// BucketClaims is the JetStream key-value bucket in which a command
	// claims a balance before it writes it (first writer wins).
	BucketClaims = "wallets_balance_claims"

	// SubjectCommands is the subject filter of StreamCommands.
	SubjectCommands = "wallets.commands.>"
	// SubjectEvents is the subject filter of StreamEvents.
	SubjectEvents = "wallets.events.>"
	// SubjectDLQ is the subject filter of StreamDLQ.
	SubjectDLQ = "wallets.dlq.>"

	// SubjectConsumerFilter is the consumer's filter subject: the commands
	// of every kind (SPEC §7); a kind no worker has is INVALID_COMMAND.
	SubjectConsumerFilter = SubjectCommands

	// KindUnknown stands for the kind of a command stored under a kind no
	// worker has, in the subject of its dead letter.
	KindUnknown = "unknown"

	// KindCreateBalance is the create-balance kind's subject token.
	KindCreateBalance = "create-balance"

	// Event names, the subject token after wallets.events.
	EventBalanceCreated        = "balance-created"
	EventBalanceCreateRejected = "balance-create-rejected"
	// EventCommandRejected is the rejection of a command of a kind no
	// worker knows (INVALID_COMMAND).
	EventCommandRejected = "command-rejected"

	// SubjectCommandsPrefix starts every command's subject:
	// wallets.commands.<kind>.<wallet>.
	SubjectCommandsPrefix = "wallets.commands."

	subjectCreateBalancePrefix   = "wallets.commands.create-balance."
	subjectBalanceCreatedPrefix  = "wallets.events.balance-created."
	subjectBalanceRejectedPrefix = "wallets.events.balance-create-rejected."
	subjectDLQCreateBalance      = "wallets.dlq.create-balance."

	// SubjectBalanceCreatedAll matches every balance-created event.
	SubjectBalanceCreatedAll = subjectBalanceCreatedPrefix + "*"
	// SubjectBalanceRejectedAll matches every balance-create-rejected event.
	SubjectBalanceRejectedAll = subjectBalanceRejectedPrefix + "*"

	// UnknownWallet is the last subject token used when a command's wallet is
	// missing or cannot be a subject token.
	UnknownWallet = "_"
)

// Headers (SPEC §3).
const (
	// HeaderMsgID carries a command's idempotency key; on events it carries
	// EventMsgID so that JetStream deduplicates a re-published event.
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderCommandKey is set on every outcome event to the command's key.
	HeaderCommandKey = "Wallets-Command-Key"
	// HeaderCommandSeq is set on every outcome event to the command's stream
	// sequence in StreamCommands.
	HeaderCommandSeq = "Wallets-Command-Seq"

	// HeaderDLQCode is the rejection code of a dead letter.
	HeaderDLQCode = "Wallets-Dlq-Code"
	// HeaderDLQReason is the human-readable reason of a dead letter.
	HeaderDLQReason = "Wallets-Dlq-Reason"
	// HeaderOriginalSubject is the subject the dead command was published to.
	HeaderOriginalSubject = "Wallets-Original-Subject"
	// HeaderOriginalSeq is the dead command's sequence in StreamCommands.
	HeaderOriginalSeq = "Wallets-Original-Seq"
	// HeaderDeliveries is how many times the dead command was delivered.
	HeaderDeliveries = "Wallets-Deliveries"
)

// Code is the reason carried by a balance-create-rejected event.
type Code string

// Rejection codes (SPEC §3).
const (
	// CodeAlreadyExists: another key created this balance.
	CodeAlreadyExists Code = "ALREADY_EXISTS"
	// CodeKeyReused: this key created the balance with a different command.
	CodeKeyReused Code = "KEY_REUSED"
	// CodeInvalidCommand: the command can never be applied as sent.
	CodeInvalidCommand Code = "INVALID_COMMAND"
	// CodeLedgerRejected: the ledger refused the write for good.
	CodeLedgerRejected Code = "LEDGER_REJECTED"
	// CodeRetriesExhausted: every allowed delivery failed transiently.
	CodeRetriesExhausted Code = "RETRIES_EXHAUSTED"
)

// DeadLetters reports whether a command rejected with c is copied to the
// dead-letter stream. ALREADY_EXISTS and KEY_REUSED are ordinary outcomes.
func (c Code) DeadLetters() bool {
	switch c {
	case CodeInvalidCommand, CodeLedgerRejected, CodeRetriesExhausted:
		return true
	}
	return false
}
