package embeddedledger

import (
	"strings"
	"unicode"
)

// unboundedNotLast reports whether a script takes, in an in-order source
// block, from an unbounded source (@world, or a source allowing unbounded
// overdraft) before the block's last source. The machine inside the real
// ledger v2.4.12 refuses such a script when it compiles it ("an unbounded
// subsource can only be in last position"); the Numscript interpreter runs
// it and takes everything from the unbounded source, so this check keeps
// the embedded ledger's answer the real one (FIDELITY.md).
//
// It reads the source clauses only, as the machine's compiler does: a
// source given by a variable is not known to be @world before the script
// runs, and capped sources ("max [...] from @world") are bounded.
func unboundedNotLast(script string) bool {
	toks := tokenize(script)
	for i := 0; i+1 < len(toks); i++ {
		if toks[i] == "source" && toks[i+1] == "=" {
			p := &sourceParser{toks: toks, i: i + 2}
			p.source()
			if p.bad {
				return true
			}
		}
	}
	return false
}

type sourceParser struct {
	toks []string
	i    int
	bad  bool
}

// peek returns the next token, skipping line ends.
func (p *sourceParser) peek() string {
	for p.i < len(p.toks) && p.toks[p.i] == "\n" {
		p.i++
	}
	if p.i < len(p.toks) {
		return p.toks[p.i]
	}
	return ""
}

func (p *sourceParser) next() string {
	t := p.peek()
	p.i++
	return t
}

// source parses one source and reports whether it is unbounded.
func (p *sourceParser) source() (unbounded bool) {
	switch t := p.peek(); {
	case t == "{":
		return p.block()
	case t == "max":
		p.next()
		p.monetary()
		if p.peek() == "from" {
			p.next()
			p.source()
		}
		return false
	case strings.HasPrefix(t, "@") || strings.HasPrefix(t, "$"):
		p.next()
		unbounded = t == "@world"
		if p.peek() == "allowing" {
			p.next()
			if p.peek() == "unbounded" {
				p.next() // unbounded overdraft
				p.next()
				return true
			}
			p.next() // overdraft up to <monetary>
			p.next()
			p.next()
			p.monetary()
		}
		return unbounded
	}
	p.next()
	return false
}

// block parses "{ ... }": an in-order list of sources, or an allotment
// (portions "from" sources), which has no order to check.
func (p *sourceParser) block() bool {
	p.next() // {
	var items []bool
	for p.peek() != "}" && p.peek() != "" {
		if t := p.peek(); t == "remaining" || strings.ContainsAny(t, "/%") && !strings.HasPrefix(t, "@") {
			// an allotment item: <portion> from <source>
			p.next()
			if p.peek() == "from" {
				p.next()
			}
			p.source()
			continue
		}
		items = append(items, p.source())
	}
	p.next() // }
	for _, u := range items[:max(len(items)-1, 0)] {
		if u {
			p.bad = true
		}
	}
	return len(items) > 0 && items[len(items)-1]
}

// monetary skips "[ASSET AMOUNT]" or a variable.
func (p *sourceParser) monetary() {
	if p.next() != "[" {
		return
	}
	for p.peek() != "]" && p.peek() != "" {
		p.next()
	}
	p.next()
}

// missingNewline reports whether a send statement lacks a line end the
// machine's grammar requires: after its "(", between its source and
// destination clauses, before its ")", and after the "{" and before the
// "}" of a block. The machine refuses such a script ("missing NEWLINE");
// the interpreter, for which line ends are optional, runs it.
func missingNewline(toks []string) bool {
	for i := 0; i < len(toks); i++ {
		if toks[i] != "send" {
			continue
		}
		// the "(" that opens the clauses: the first one at bracket depth 0
		depth, open := 0, -1
		for j := i + 1; j < len(toks) && open < 0; j++ {
			switch toks[j] {
			case "[":
				depth++
			case "]":
				depth--
			case "(":
				if depth == 0 {
					open = j
				}
			}
		}
		if open < 0 {
			return false
		}
		depth = 0
		for j := open; j < len(toks); j++ {
			switch t := toks[j]; t {
			case "(", "{":
				depth++
				if j+1 < len(toks) && toks[j+1] != "\n" {
					return true
				}
			case ")", "}":
				depth--
				if toks[j-1] != "\n" {
					return true
				}
			case "source", "destination":
				if depth == 1 && toks[j-1] != "\n" {
					return true
				}
			}
			if depth == 0 {
				i = j
				break
			}
		}
	}
	return false
}

// tokenize splits a script into brackets, "=", words and line ends ("\n"),
// without comments and string literals.
func tokenize(s string) []string {
	var toks []string
	var word strings.Builder
	flush := func() {
		if word.Len() > 0 {
			toks = append(toks, word.String())
			word.Reset()
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '/' && i+1 < len(s) && s[i+1] == '/':
			flush()
			for i+1 < len(s) && s[i+1] != '\n' {
				i++
			}
		case c == '\n' || c == '\r':
			flush()
			if len(toks) == 0 || toks[len(toks)-1] != "\n" {
				toks = append(toks, "\n")
			}
		case c == '"':
			flush()
			start := i
			for i++; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' {
					i++
				}
			}
			toks = append(toks, s[start:min(i+1, len(s))])
		case strings.IndexByte("{}()[]=,", c) >= 0:
			flush()
			toks = append(toks, string(c))
		case unicode.IsSpace(rune(c)):
			flush()
		default:
			word.WriteByte(c)
		}
	}
	flush()
	return toks
}
