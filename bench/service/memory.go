package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flatnet-io/flatnet/internal/probe"
)

// pprofAddr is where flatnetd serves /debug/pprof/ in node-1 with -memory.
const pprofAddr = "127.0.0.1:9467"

// memory is what -memory measures of flatnetd once it works: its RSS 3 s
// after (the table's RSS), 30 s and 120 s after (the runtime returns what
// the start-up needed over time, and the heap grows back to the goal the
// live heap sets), then its Go heap after a GC and a heap profile, in that
// order (the profile's GC changes the RSS).
type memory struct {
	rss3s, rss30s, rss120s float64 // MiB
	heapAlloc              float64 // MiB, after a GC: live objects
	heapInuse              float64 // MiB, after a GC: live objects and their spans' free slots
	heapSys                float64 // MiB, heap memory obtained from the OS, less what was released to it
	profile                string  // heap profile written here
}

func (m memory) String() string {
	return fmt.Sprintf("RSS %.0f MiB 3 s after working, %.0f MiB 30 s after, %.0f MiB 120 s after; Go heap after a GC: live %.0f MiB, in use %.0f MiB, held from the OS %.0f MiB; heap profile %s",
		m.rss3s, m.rss30s, m.rss120s, m.heapAlloc, m.heapInuse, m.heapSys, m.profile)
}

// measureMemory fills m for flatnetd (pid), which serves pprof on
// pprofAddr in nsPath, and writes its heap profile to profile.
func measureMemory(nsPath string, pid int, rss3s float64, profile string) (memory, error) {
	m := memory{rss3s: rss3s, profile: profile}
	time.Sleep(27 * time.Second)
	m.rss30s = rss(pid)
	time.Sleep(90 * time.Second)
	m.rss120s = rss(pid)
	text, err := fetch(nsPath, pprofAddr, "/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		return m, err
	}
	stats := map[string]float64{}
	for _, line := range strings.Split(string(text), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[2] == "=" {
			v, _ := strconv.ParseFloat(f[3], 64)
			stats[f[1]] = v / (1 << 20)
		}
	}
	m.heapAlloc, m.heapInuse, m.heapSys = stats["HeapAlloc"], stats["HeapInuse"], stats["HeapSys"]-stats["HeapReleased"]
	data, err := fetch(nsPath, pprofAddr, "/debug/pprof/heap")
	if err != nil {
		return m, err
	}
	return m, os.WriteFile(profile, data, 0o644)
}

// fetch GETs path from addr inside the namespace, with no limit on the
// size of the answer.
func fetch(nsPath, addr, path string) ([]byte, error) {
	c, err := probe.Dial(nsPath, "tcp", addr, 3*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, addr); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
	}
	return body, err
}

// measureMemory is -memory's measurement of proxy p (pid) after its RSS
// 3 s after working: for flatnet the rest of memory, for kube-proxy
// nothing more.
func (b *bench) measureMemory(r *row, p proxyUnderTest, pid int) error {
	if p.name == "flatnet" {
		m, err := measureMemory(b.nodeNS, pid, r.rssMiB, b.l.Path(fmt.Sprintf("flatnetd-heap-%d.pprof", r.size)))
		if err != nil {
			return err
		}
		r.mem = &m
	}
	fmt.Printf("    start->working %s, full sync %.2fs, RSS %.0f MiB\n", r.startToWorking.Round(time.Millisecond), r.fullSync, r.rssMiB)
	if r.mem != nil {
		fmt.Printf("    %s\n", r.mem)
	}
	return nil
}

// reportMemory prints -memory's rows.
func reportMemory(rows []row) {
	fmt.Println()
	for _, r := range rows {
		fmt.Printf("%d Services, %s: start->working %s, full sync %.2f s, RSS %.0f MiB 3 s after working\n",
			r.size, r.proxy, r.startToWorking.Round(time.Millisecond), r.fullSync, r.rssMiB)
		if r.mem != nil {
			fmt.Printf("    %s\n", r.mem)
		}
	}
}
