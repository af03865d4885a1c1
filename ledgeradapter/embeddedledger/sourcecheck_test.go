package embeddedledger

import "testing"

func TestUnboundedNotLast(t *testing.T) {
	t.Parallel()
	for script, want := range map[string]bool{
		"send $a (\n source = { @world @b }\n destination = @c\n)":                                   true,
		"send $a (\n source = {\n @b\n @world\n }\n destination = @c\n)":                             false,
		"send $a (\n source = @world\n destination = @c\n)":                                          false,
		"send $a (\n source = { @a allowing unbounded overdraft\n @b }\n destination = @c\n)":        true,
		"send $a (\n source = { @a allowing overdraft up to [USD/2 10]\n @b }\n destination = @c\n)": false,
		"send $a (\n source = { max [USD/2 5] from @world\n @b }\n destination = @c\n)":              false,
		"send $a (\n source = { { @b @world } @c }\n destination = @c\n)":                            true,
		"send $a (\n source = { { @world @b } }\n destination = @c\n)":                               true,
		"send $a (\n source = { 1/2 from @world\n remaining from @b }\n destination = @c\n)":         false,
		"send $a (\n source = { $v @b }\n destination = @c\n)":                                       false,
		"// source = { @world @b }\nsend $a (\n source = @b\n destination = @c\n)":                   false,
		"set_tx_meta(\"source = { @world @b }\", \"x\")":                                             false,
	} {
		if got := unboundedNotLast(script); got != want {
			t.Errorf("unboundedNotLast(%q) = %v, want %v", script, got, want)
		}
	}
}
