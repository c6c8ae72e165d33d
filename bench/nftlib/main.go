// Command nftlib programs the same synthetic Service ruleset through two Go
// nftables libraries and compares them: sigs.k8s.io/knftables (renders nft
// syntax and runs `nft -f -`, as the proxy does) and github.com/google/nftables
// (builds netlink messages and sends them as one batch).
//
// For each N in -services it measures, per library: the full load of a table
// with N Services in one transaction (median and best of 3, the table deleted
// between runs), then 50 one-Service updates with the N Services present
// (the Service's chains flushed and refilled with new endpoints, its map
// element deleted and added: what a partial sync does), and the Go bytes
// allocated by a full load. After the loads and after the updates it checks
// the chain and element counts with `nft -j list table` and that both
// libraries left the same ruleset (`nft list table`, names aside).
//
// Everything runs in a network namespace of its own, fn-nftbench, deleted on
// exit; nftables in the root namespace is never touched. Run as root:
//
//	go run ./bench/nftlib -services 1000,10000 [-shape epchains,inline]
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flatnet-io/flatnet/internal/netns"
)

const nsName = "fn-nftbench"

func main() { os.Exit(run()) }

func run() int {
	servicesFlag := flag.String("services", "1000,10000", "comma-separated Service counts")
	shapeFlag := flag.String("shape", "epchains", "comma-separated ruleset shapes: epchains (svc chain + one chain per endpoint), inline (dnat in the svc chain, what the proxy rendered without session affinity before Services became map elements)")
	samples := flag.Int("updates", 50, "one-Service updates timed per library and N")
	loads := flag.Int("loads", 3, "full loads timed per library and N")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.BoolVar(&gnftLocked, "gnft-locked", false, "run google/nftables on the thread locked inside the namespace, as knftables (default: on a free goroutine)")
	flag.IntVar(&sockBuf, "gnft-sockbuf", sockBuf, "google/nftables netlink socket send and receive buffer, bytes (0: the system default)")
	flag.Parse()
	counts, err := parseCounts(*servicesFlag)
	if err == nil && (*samples < 1 || *loads < 1) {
		err = errors.New("-updates and -loads must be at least 1")
	}
	var shapes []shape
	for _, s := range strings.Split(*shapeFlag, ",") {
		if err == nil {
			var sh shape
			sh, err = parseShape(s)
			shapes = append(shapes, sh)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nftlib:", err)
		return 2
	}

	var start unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &start); err != nil {
		fmt.Fprintln(os.Stderr, "nftlib:", err)
		return 1
	}
	path, err := netns.Create(nsName)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nftlib: %v (a leftover? check `ip netns list`, remove it with `ip netns del %s`)\n", err, nsName)
		return 1
	}
	var ours unix.Stat_t
	if err := unix.Stat(path, &ours); err != nil {
		_ = netns.Delete(nsName)
		fmt.Fprintln(os.Stderr, "nftlib:", err)
		return 1
	}
	// cleanup deletes the namespace if the name still is the one made here
	// (someone may have deleted it and another run made a new one).
	cleanup := func() {
		var now unix.Stat_t
		if unix.Stat(path, &now) != nil || now.Dev != ours.Dev || now.Ino != ours.Ino {
			return
		}
		if err := netns.Delete(nsName); err != nil {
			fmt.Fprintln(os.Stderr, "nftlib: delete namespace:", err)
		}
	}
	defer cleanup()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		cleanup()
		fmt.Fprintf(os.Stderr, "nftlib: %v: namespace %s deleted\n", s, nsName)
		os.Exit(130)
	}()

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "nftlib:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	loadStart := loadAvg()
	var results []result
	err = netns.Do(path, func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}()
		if err := checkInside(path, start); err != nil {
			return err
		}
		results, err = benchAll(path, counts, shapes, *loads, *samples)
		return err
	})
	if len(results) > 0 {
		printTable(results, *loads, *samples, loadStart)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nftlib:", err)
		return 1
	}
	return 0
}

func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > maxServices {
			return nil, fmt.Errorf("bad Service count %q (1..%d)", f, maxServices)
		}
		out = append(out, n)
	}
	return out, nil
}

// checkInside refuses to go on unless this thread is in the namespace at
// path and that is not the namespace the process started in (start, a
// stat of it taken before switching): the children (nft) that knftables and
// the checks start inherit the thread's namespace.
func checkInside(path string, start unix.Stat_t) error {
	var self, want unix.Stat_t
	for p, st := range map[string]*unix.Stat_t{"/proc/thread-self/ns/net": &self, path: &want} {
		if err := unix.Stat(p, st); err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
	}
	if self.Dev != want.Dev || self.Ino != want.Ino || (self.Dev == start.Dev && self.Ino == start.Ino) {
		return fmt.Errorf("not inside namespace %s: refusing to touch nftables", nsName)
	}
	return nil
}

type result struct {
	lib       string
	shape     shape
	n         int
	loads     []time.Duration
	updates   []time.Duration
	allocMB   float64 // Go bytes allocated by one full load
	nftRSSMB  float64 // peak RSS of the nft process of a full load (knftables only)
	listMatch string  // the two libraries' tables listed the same
}

// benchAll runs every shape and N, knftables then google/nftables, and
// compares the two tables' listings after the loads and after the updates.
func benchAll(nsPath string, counts []int, shapes []shape, loads, samples int) ([]result, error) {
	nsFd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", nsPath, err)
	}
	defer unix.Close(nsFd)
	kb, err := newKnft()
	if err != nil {
		return nil, fmt.Errorf("knftables: %w", err)
	}
	gb, err := newGnft(nsFd)
	if err != nil {
		return nil, fmt.Errorf("google/nftables: %w", err)
	}
	defer gb.close()
	var out []result
	for _, sh := range shapes {
		for _, n := range counts {
			svcs := makeServices(n)
			var afterLoad, afterUpdates []string
			for _, b := range []backend{kb, gb} {
				r, listings, err := benchOne(b, sh, svcs, loads, samples)
				if err != nil {
					return out, fmt.Errorf("%s, %s, N=%d: %w", b.name(), sh, n, err)
				}
				afterLoad, afterUpdates = append(afterLoad, listings[0]), append(afterUpdates, listings[1])
				out = append(out, r)
			}
			match := afterLoad[0] == afterLoad[1] && afterUpdates[0] == afterUpdates[1]
			for i := len(out) - 2; i < len(out); i++ {
				out[i].listMatch = map[bool]string{true: "yes", false: "NO"}[match]
			}
			if !match {
				return out, fmt.Errorf("%s, N=%d: the two libraries left different rulesets:\n%s", sh, n,
					firstDiff(afterLoad[0]+afterUpdates[0], afterLoad[1]+afterUpdates[1]))
			}
		}
	}
	return out, nil
}

// benchOne times the full loads and the updates of one library; it returns
// the normalized listings after the last load and after the updates.
func benchOne(b backend, sh shape, svcs []service, loads, samples int) (result, [2]string, error) {
	r := result{lib: b.name(), shape: sh, n: len(svcs)}
	var listings [2]string
	if err := b.drop(); err != nil { // a leftover of an earlier shape; none is fine
		return r, listings, err
	}
	var allocs []uint64
	for i := range loads {
		if i > 0 {
			if err := b.drop(); err != nil {
				return r, listings, fmt.Errorf("delete table: %w", err)
			}
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		d, err := b.timed(func() error { return b.load(sh, svcs) })
		if err != nil {
			return r, listings, fmt.Errorf("full load: %w", err)
		}
		r.loads = append(r.loads, d)
		runtime.ReadMemStats(&after)
		allocs = append(allocs, after.TotalAlloc-before.TotalAlloc)
	}
	slices.Sort(allocs)
	r.allocMB = float64(allocs[len(allocs)/2]) / (1 << 20)
	var err error
	if m, ok := b.(rssLoader); ok { // one more, untimed load, to see nft's memory
		if err := b.drop(); err != nil {
			return r, listings, fmt.Errorf("delete table: %w", err)
		}
		if r.nftRSSMB, err = m.loadRSS(sh, svcs); err != nil {
			return r, listings, fmt.Errorf("full load: %w", err)
		}
	}
	if listings[0], err = verify(b.table(), sh, svcs, nil); err != nil {
		return r, listings, fmt.Errorf("after full load: %w", err)
	}
	updated := map[int]int{} // Service -> generation of its endpoints
	for k := range samples {
		i := (k * 7919) % len(svcs)
		gen := k + 1
		d, err := b.timed(func() error { return b.update(sh, svcs[i], gen) })
		if err != nil {
			return r, listings, fmt.Errorf("update %d (Service %d): %w", k, i, err)
		}
		r.updates = append(r.updates, d)
		updated[i] = gen
	}
	if listings[1], err = verify(b.table(), sh, svcs, updated); err != nil {
		return r, listings, fmt.Errorf("after updates: %w", err)
	}
	if err := b.drop(); err != nil {
		return r, listings, fmt.Errorf("delete table: %w", err)
	}
	return r, listings, nil
}

// timeHere times f on the calling goroutine, which is locked to a thread
// inside the namespace: what knftables needs, as the nft it starts inherits
// the thread's namespace.
func timeHere(f func() error) (time.Duration, error) {
	start := time.Now()
	err := f()
	return time.Since(start), err
}

// timeOffThread times f on a new goroutine, not locked to a thread, as a
// proxy in the host namespace would run: for google/nftables, whose socket
// was opened inside the namespace and stays there. (mdlayher/socket starts
// a goroutine per read and waits for it, and on a locked thread each wait
// hands the thread off: measured, that tripled the full load.)
func timeOffThread(f func() error) (time.Duration, error) {
	type res struct {
		d   time.Duration
		err error
	}
	c := make(chan res)
	go func() {
		defer func() {
			if r := recover(); r != nil { // back to the caller, which deletes the namespace
				c <- res{err: fmt.Errorf("panic: %v\n%s", r, debug.Stack())}
			}
		}()
		d, err := timeHere(f)
		c <- res{d, err}
	}()
	r := <-c
	return r.d, r.err
}

func quantile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func ms(d time.Duration) string {
	if d >= 10*time.Second {
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	if d >= time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
}

func printTable(rs []result, loads, samples int, loadStart string) {
	cmd := os.Args[0]
	if strings.Contains(cmd, "go-build") { // go run's temporary binary
		cmd = "go run ./bench/nftlib"
	}
	fmt.Printf("command: %s\n", strings.Join(append([]string{cmd}, os.Args[1:]...), " "))
	fmt.Printf("nft: %s, kernel: %s, %d CPUs, %s; load average %s at start, %s at end\n",
		nftVersion(), kernelRelease(), runtime.NumCPU(), runtime.Version(), loadStart, loadAvg())
	fmt.Printf("full load: median of %d (best); update: %d samples, one Service with N present\n\n", loads, samples)
	fmt.Println("| library | shape | N | full load | update p50 | update p99 | alloc MB / load | nft peak RSS MB | same ruleset |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---|")
	for _, r := range rs {
		rss := "-"
		if r.nftRSSMB > 0 {
			rss = fmt.Sprintf("%.0f", r.nftRSSMB)
		}
		same := r.listMatch
		if same == "" {
			same = "?"
		}
		fmt.Printf("| %s | %s | %d | %s (%s) | %s | %s | %.1f | %s | %s |\n", r.lib, r.shape, r.n,
			ms(quantile(r.loads, 0.5)), ms(slices.Min(r.loads)), ms(quantile(r.updates, 0.5)), ms(quantile(r.updates, 0.99)),
			r.allocMB, rss, same)
	}
}

// loadAvg is the 1-minute load average: other work on the machine.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}
