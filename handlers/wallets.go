package handlers

// Wallets is what the seven kinds of the wallets service need: the
// create-balance handler (with its claim, set up by the caller), the ledger
// the metadata writes of create-wallet and update-wallet go through (a
// batcher, say), and the one the transactions of the money commands go
// through (the client, whose cap on transactions in flight then holds
// whatever the worker's concurrency).
type Wallets struct {
	Balances      *CreateBalance
	Writes        Ledger
	Transactions  HoldLedger
	LedgerName    string
	AccountPrefix string
	// ChainLength caps how many consecutive credits and debits of one
	// wallet go to the ledger in one ordered bulk, when Transactions can
	// send them (a ChainLedger): 0 is DefaultChainLength, 1 sends each
	// alone.
	ChainLength int
}

// chain is the chain of the money commands, nil when there is none.
func (w Wallets) chain() *Chain {
	cl, ok := w.Transactions.(ChainLedger)
	if !ok || w.ChainLength == 1 {
		return nil
	}
	return &Chain{Ledger: cl, Length: w.ChainLength}
}

// Kinds registers the seven kinds: every write of the wallets service.
func (w Wallets) Kinds() Kinds {
	chain := w.chain()
	return NewKinds(
		CreateBalanceKind(w.Balances),
		CreateWalletKind(&CreateWallet{Ledger: w.Writes, LedgerName: w.LedgerName, AccountPrefix: w.AccountPrefix}),
		UpdateWalletKind(&UpdateWallet{Ledger: w.Writes, LedgerName: w.LedgerName, AccountPrefix: w.AccountPrefix}),
		CreditWalletKind(&CreditWallet{Ledger: w.Transactions, LedgerName: w.LedgerName, AccountPrefix: w.AccountPrefix, Chain: chain}),
		DebitWalletKind(&DebitWallet{Ledger: w.Transactions, LedgerName: w.LedgerName, AccountPrefix: w.AccountPrefix, Chain: chain}),
		ConfirmHoldKind(&ConfirmHold{Ledger: w.Transactions, LedgerName: w.LedgerName, AccountPrefix: w.AccountPrefix}),
		VoidHoldKind(&VoidHold{Ledger: w.Transactions, LedgerName: w.LedgerName, AccountPrefix: w.AccountPrefix}),
	)
}
