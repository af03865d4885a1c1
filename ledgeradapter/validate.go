package ledgeradapter

import (
	"fmt"
	"regexp"
	"strings"
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
	if !isAddress(address) {
		return fmt.Errorf("%w: %q does not match %s", ErrInvalidAddress, address, addressRe)
	}
	return nil
}

// ValidateLedgerName checks a ledger name against the ledger's rule and its
// reserved names. The error wraps ErrInvalidLedgerName.
func ValidateLedgerName(name string) error {
	switch {
	case len(name) > 63 || !isWord(name):
		return fmt.Errorf("%w: %q does not match %s", ErrInvalidLedgerName, name, ledgerNameRe)
	case reservedLedgerNames[name]:
		return fmt.Errorf("%w: %q is reserved", ErrInvalidLedgerName, name)
	}
	return nil
}

// isWord is [0-9a-zA-Z_-]+ without a regexp: every ledger request checks its
// addresses and ledger name, and a regexp match cost a few per cent of a
// busy worker's CPU. TestMatchersAgreeWithTheRules keeps them in step.
func isWord(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// isAddress is addressRe: words joined by single colons.
func isAddress(s string) bool {
	for {
		i := strings.IndexByte(s, ':')
		if i < 0 {
			return isWord(s)
		}
		if !isWord(s[:i]) {
			return false
		}
		s = s[i+1:]
	}
}
