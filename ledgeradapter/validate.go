package ledgeradapter

import (
	"fmt"
	"regexp"
)

var (
	// addressRe is the ledger's account address rule (pkg/accounts,
	// CONTRACT §5). The OpenAPI text says ^\w+(:\w+)*$; the code also allows
	// dashes, and so do we.
	addressRe = regexp.MustCompile(`^[a-zA-Z0-9_-]+(:[a-zA-Z0-9_-]+)*$`)

	// ledgerNameRe is the ledger's name rule, for ledgers and buckets.
	ledgerNameRe = regexp.MustCompile(`^[0-9a-zA-Z_-]{1,63}$`)

	reservedLedgerNames = map[string]bool{"_": true, "_info": true, "_healthcheck": true}
)

// ValidateAddress checks an account address against the ledger's address
// rule. The v2 API does not check addresses itself, and reads an address with
// an empty segment ("a::b", "a:") as a pattern, answering with whichever
// account matches first (CONTRACT §1), so the Client calls this before every
// account request. The error wraps ErrInvalidAddress.
func ValidateAddress(address string) error {
	if !addressRe.MatchString(address) {
		return fmt.Errorf("%w: %q does not match %s", ErrInvalidAddress, address, addressRe)
	}
	return nil
}

// ValidateLedgerName checks a ledger name against the ledger's rule and its
// reserved names. The error wraps ErrInvalidLedgerName.
func ValidateLedgerName(name string) error {
	switch {
	case !ledgerNameRe.MatchString(name):
		return fmt.Errorf("%w: %q does not match %s", ErrInvalidLedgerName, name, ledgerNameRe)
	case reservedLedgerNames[name]:
		return fmt.Errorf("%w: %q is reserved", ErrInvalidLedgerName, name)
	}
	return nil
}
