package ledgeradapter

import (
	"math/rand/v2"
	"testing"
)

// matcherSamples are strings near the edges of the address and name rules,
// and random ones over an alphabet that holds every kind of byte the rules
// tell apart.
func matcherSamples() []string {
	out := []string{"", ":", "a", "a:", ":a", "a::b", "a:b", "a-b_c:9", "a b", "é", "a:b:c", "A_", "-", "_:_",
		"a\\x00", "a/b", "a.b", string(make([]byte, 63)), "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}
	const alphabet = "aZ09_-:: .é\\x00/"
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		b := make([]byte, r.IntN(70))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		out = append(out, string(b))
	}
	return out
}

// TestMatchersAgreeWithTheRules: the hand-written matchers say what the
// rules' regular expressions say.
func TestMatchersAgreeWithTheRules(t *testing.T) {
	for _, s := range matcherSamples() {
		if got, want := isAddress(s), addressRe.MatchString(s); got != want {
			t.Fatalf("isAddress(%q) = %v, the rule says %v", s, got, want)
		}
		if got, want := ValidateLedgerName(s) == nil || reservedLedgerNames[s], ledgerNameRe.MatchString(s); got != want {
			t.Fatalf("ValidateLedgerName(%q) = %v, the rule says %v", s, got, want)
		}
	}
}
