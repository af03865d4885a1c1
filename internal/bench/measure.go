package bench

import (
	"bufio"
	"bytes"
	"math"
	"os"
	"runtime/metrics"
	"slices"
	"strconv"
	"sync"
	"time"
)

// sampleEvery is how often memory is sampled during a phase.
const sampleEvery = 50 * time.Millisecond

// heapObjects is the Go heap in use by objects, live or not yet swept: the
// heap of the whole process, the embedded NATS server's included.
const heapObjects = "/memory/classes/heap/objects:bytes"

// memory samples the process's heap and RSS and keeps their peaks since the
// last reset.
type memory struct {
	mu       sync.Mutex
	peakHeap uint64
	peakRSS  uint64
	samples  []metrics.Sample
	stop     chan struct{}
	done     chan struct{}
}

func startMemory() *memory {
	m := &memory{
		samples: []metrics.Sample{{Name: heapObjects}},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	m.sample()
	go func() {
		defer close(m.done)
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				m.sample()
			case <-m.stop:
				return
			}
		}
	}()
	return m
}

func (m *memory) sample() {
	m.mu.Lock()
	defer m.mu.Unlock()
	metrics.Read(m.samples)
	if v := m.samples[0].Value; v.Kind() == metrics.KindUint64 {
		m.peakHeap = max(m.peakHeap, v.Uint64())
	}
	if st, err := procStatus(); err == nil {
		m.peakRSS = max(m.peakRSS, st.rss)
	}
}

// peaks returns the peaks since the last call (or the start) and resets them.
func (m *memory) peaks() (heap, rss uint64) {
	m.sample()
	m.mu.Lock()
	defer m.mu.Unlock()
	heap, rss = m.peakHeap, m.peakRSS
	m.peakHeap, m.peakRSS = 0, 0
	return heap, rss
}

func (m *memory) close() {
	close(m.stop)
	<-m.done
}

// status is the memory part of /proc/self/status, in bytes.
type status struct {
	rss, hwm uint64 // VmRSS, VmHWM (the peak RSS of the process's life)
}

func procStatus() (status, error) { return procStatusOf("self") }

// procStatusOf reads the status of process pid ("self": this one).
func procStatusOf(pid string) (status, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return status{}, err
	}
	var st status
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, rest, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok {
			continue
		}
		var dst *uint64
		switch string(name) {
		case "VmRSS":
			dst = &st.rss
		case "VmHWM":
			dst = &st.hwm
		default:
			continue
		}
		f := bytes.Fields(rest) // "123456 kB"
		if len(f) == 2 {
			if kb, err := strconv.ParseUint(string(f[0]), 10, 64); err == nil {
				*dst = kb * 1024
			}
		}
	}
	return st, sc.Err()
}

// Latency is a latency distribution in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func latencyOf(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	// Nearest rank: the smallest value with at least p of the samples at or
	// below it.
	at := func(p float64) float64 {
		i := int(math.Ceil(float64(len(s))*p)) - 1
		return ms(s[min(max(i, 0), len(s)-1)])
	}
	return Latency{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: ms(s[len(s)-1])}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
