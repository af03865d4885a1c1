package messages

import (
	"math/rand/v2"
	"testing"
)

// TestIsTokenIsTheTokenPattern: isToken says what tokenPattern says.
func TestIsTokenIsTheTokenPattern(t *testing.T) {
	samples := []string{"", "a", "a-b_C9", "a b", "a.b", "é", "a:b", "-", "_"}
	const alphabet = "aZ09_-:. é*>"
	r := rand.New(rand.NewPCG(3, 4))
	for range 20000 {
		b := make([]byte, r.IntN(20))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		samples = append(samples, string(b))
	}
	for _, s := range samples {
		if got, want := isToken(s), tokenPattern.MatchString(s); got != want {
			t.Fatalf("isToken(%q) = %v, tokenPattern says %v", s, got, want)
		}
	}
}
