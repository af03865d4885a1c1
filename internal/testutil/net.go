package testutil

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/stretchr/testify/require"
)

var (
	portsMu sync.Mutex
	ports   = map[int]bool{}
)

// FreeAddr returns 127.0.0.1:port for a port that is free now and that no
// other call in this process handed out. It picks below the kernel's
// ephemeral range when it can, so that no outgoing connection takes the port
// meanwhile (a server restarted on it, a worker killed and started again).
func FreeAddr(t T) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePorts(t, 1)[0])
}

// FreePorts returns n distinct ports of 127.0.0.1, free now, as FreeAddr
// picks them.
func FreePorts(t T, n int) []int {
	t.Helper()
	low := ephemeralLow()
	portsMu.Lock()
	defer portsMu.Unlock()
	out := make([]int, 0, n)
	for tries := 0; len(out) < n && tries < 200*n; tries++ {
		port := 20000 + rand.IntN(max(low-20000, 1000))
		if ports[port] || port >= low {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		_ = ln.Close()
		ports[port] = true
		out = append(out, port)
	}
	for len(out) < n { // no room below the ephemeral range: let the kernel pick
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port := ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		if !ports[port] {
			ports[port] = true
			out = append(out, port)
		}
	}
	return out
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				return n
			}
		}
	}
	return 32768
}
