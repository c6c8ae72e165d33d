// Command cni benchmarks CNI ADD and DEL latency: flatnet-cni against the
// reference bridge + host-local plugins (containernetworking/plugins, built
// from the module proxy at cnitest.ReferenceVersion), in one run, both driven
// through libcni exactly as containerd drives them.
//
// Each implementation gets its own node namespace; pod namespaces are made
// before the clock starts. It prints p50/p99 per phase and the ratio
// flatnet/reference. Rounds alternate which implementation runs first, and
// their samples are pooled. Run as root: go run ./bench/cni [-pods 200 -workers 8 -rounds 3].
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/cnitest"
	"github.com/flatnet-io/flatnet/internal/netns"
)

const prefix = "fn-bench-"

type impl struct {
	name   string
	plugin func(dataDir string) string
}

var impls = []impl{
	{"flatnet-cni", func(d string) string {
		return fmt.Sprintf(`{"type": "flatnet-cni", "bridge": "fn0", "ipam": {"ranges": [[{"subnet": "10.99.0.0/16"}]], "dataDir": %q}}`, d)
	}},
	{"bridge+host-local " + cnitest.ReferenceVersion, func(d string) string {
		return fmt.Sprintf(`{"type": "bridge", "bridge": "fn0", "isGateway": true, "hairpinMode": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/16"}]], "dataDir": %q}}`, d)
	}},
}

func main() { os.Exit(run()) }

func run() int {
	pods := flag.Int("pods", 200, "pods per run")
	workers := flag.Int("workers", 8, "concurrent callers in the concurrent run")
	rounds := flag.Int("rounds", 3, "rounds per mode; implementations alternate within each round")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the CNI benchmark needs root (network namespaces)")
		return 1
	}
	if err := cleanup(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = cleanup() }()
	bin, err := os.MkdirTemp("", "flatnet-bench-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(bin)
	fmt.Println("building flatnet-cni and reference bridge, host-local", cnitest.ReferenceVersion, "...")
	if err := cnitest.BuildFlatnet(bin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := cnitest.BuildReference(bin, "main/bridge", "ipam/host-local"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	results := map[string]map[string][]time.Duration{}
	for _, mode := range []struct {
		name    string
		workers int
	}{{"sequential", 1}, {fmt.Sprintf("%d concurrent", *workers), *workers}} {
		for round := range *rounds {
			for i := range impls {
				im := impls[(i+round)%len(impls)] // alternate which one goes first
				add, del, err := measure(bin, im, *pods, mode.workers)
				if err != nil {
					fmt.Fprintf(os.Stderr, "%s, %s: %v\n", im.name, mode.name, err)
					return 1
				}
				if results[im.name] == nil {
					results[im.name] = map[string][]time.Duration{}
				}
				results[im.name]["ADD "+mode.name] = append(results[im.name]["ADD "+mode.name], add...)
				results[im.name]["DEL "+mode.name] = append(results[im.name]["DEL "+mode.name], del...)
			}
		}
	}
	report(results, *pods, *workers, *rounds)
	return 0
}

// measure wires pods to a fresh node through libcni and times each ADD, then
// each DEL.
func measure(bin string, im impl, pods, workers int) (add, del []time.Duration, err error) {
	if err := cleanup(); err != nil {
		return nil, nil, err
	}
	state, err := os.MkdirTemp("", "flatnet-bench-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(state)
	node, err := netns.Create(prefix + "node")
	if err != nil {
		return nil, nil, err
	}
	conflist := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "bench", "plugins": [%s]}`, im.plugin(filepath.Join(state, "ipam")))
	rt, err := cniruntime.New(node, []string{bin}, filepath.Join(state, "cache"), []byte(conflist))
	if err != nil {
		return nil, nil, err
	}
	all := make([]cniruntime.Pod, pods)
	for i := range all {
		name := fmt.Sprintf("pod%d", i)
		path, err := netns.Create(prefix + name)
		if err != nil {
			return nil, nil, err
		}
		all[i] = cniruntime.Pod{ID: "bench-" + name, NetNS: path, Namespace: "bench", Name: name, UID: name}
	}
	ctx := context.Background()
	if add, err = timeEach(all, workers, func(p cniruntime.Pod) error { _, err := rt.Add(ctx, p); return err }); err != nil {
		return nil, nil, fmt.Errorf("ADD: %w", err)
	}
	if del, err = timeEach(all, workers, func(p cniruntime.Pod) error { return rt.Del(ctx, p) }); err != nil {
		return nil, nil, fmt.Errorf("DEL: %w", err)
	}
	return add, del, nil
}

func timeEach(pods []cniruntime.Pod, workers int, op func(cniruntime.Pod) error) ([]time.Duration, error) {
	out := make([]time.Duration, len(pods))
	errs := make([]error, len(pods))
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				start := time.Now()
				errs[i] = op(pods[i])
				out[i] = time.Since(start)
			}
		}()
	}
	for i := range pods {
		next <- i
	}
	close(next)
	wg.Wait()
	return out, errors.Join(errs...)
}

func pct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1))]
}

func report(results map[string]map[string][]time.Duration, pods, workers, rounds int) {
	phases := []string{"ADD sequential", "DEL sequential", fmt.Sprintf("ADD %d concurrent", workers), fmt.Sprintf("DEL %d concurrent", workers)}
	ours, ref := results[impls[0].name], results[impls[1].name]
	fmt.Printf("\nCNI latency through libcni, %d pods per run, %d alternating rounds pooled (ms)\n", pods, rounds)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "phase\tflatnet p50\tflatnet p99\treference p50\treference p99\tratio p50\tratio p99\t\n")
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }
	for _, ph := range phases {
		o50, o99, r50, r99 := pct(ours[ph], .5), pct(ours[ph], .99), pct(ref[ph], .5), pct(ref[ph], .99)
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t\n", ph, ms(o50), ms(o99), ms(r50), ms(r99),
			float64(o50)/float64(r50), float64(o99)/float64(r99))
	}
	_ = w.Flush()
	fmt.Printf("reference = bridge + host-local %s; ratio = flatnet / reference (lower is better)\n", cnitest.ReferenceVersion)
}

func cleanup() error {
	_, err := netns.DeleteAll(prefix)
	return err
}
