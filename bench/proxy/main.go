// Command proxy measures the service proxy's nftables syncs at scale, with
// the real nft in a throwaway namespace and no API server: the first full
// sync with N Services x E endpoints, syncs after one Service changes, the
// idle table check, and a restarted proxier's first sync.
// Run as root: go run ./bench/proxy [-services 10000 -endpoints 2];
// CPUPROFILE=file profiles the first sync and the changes, MEMPROFILE=file
// writes a heap profile of what the two proxiers hold at the end.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/proxy"
)

type noConntrack struct{}

func (noConntrack) Delete([]proxy.Flow) error { return nil }

func main() { os.Exit(run()) }

func run() int {
	services := flag.Int("services", 10000, "Services")
	endpoints := flag.Int("endpoints", 2, "endpoints per Service")
	changes := flag.Int("changes", 20, "single-Service changes to time after the first sync")
	flag.Parse()
	name := fmt.Sprintf("fn-benchproxy-%d", os.Getpid())
	path, err := netns.Create(name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer netns.Delete(name)
	err = netns.Do(path, func() error { return bench(*services, *endpoints, *changes) })
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func svc(i int) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("svc-%d", i)},
		Spec: corev1.ServiceSpec{ClusterIP: fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), Type: corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
}

func slice(i, eps, gen int) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("svc-%d-x", i),
		Labels: map[string]string{discoveryv1.LabelServiceName: fmt.Sprintf("svc-%d", i)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080)), Protocol: ptr.To(corev1.ProtocolTCP)}}}
	for e := range eps {
		n := i*eps + e + gen
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.%d.%d.%d", 128+n/65000%64, n/250%260%256, n%250+1)},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return s
}

func bench(services, eps, changes int) error {
	tables, err := nft.New(nft.IPv4, proxy.Table)
	if err != nil {
		return err
	}
	// newProxier is flatnetd starting with every Service known, the first
	// changes applied, and the table as an earlier run left it.
	newProxier := func(changed int) *proxy.Proxier {
		p := proxy.New(proxy.Config{NodeName: "node-1", ClusterCIDR: netip.MustParsePrefix("10.128.0.0/10")}, tables, noConntrack{},
			slog.New(slog.NewTextHandler(io.Discard, nil)))
		for i := range services {
			p.UpdateService(svc(i))
			gen := 0
			if i < changed {
				gen = 7 + i
			}
			p.UpdateSlice(slice(i, eps, gen))
		}
		return p
	}
	p := newProxier(0)
	defer p.Close()
	ctx := context.Background()
	if f := os.Getenv("CPUPROFILE"); f != "" { // the first sync and the changes
		pf, err := os.Create(f)
		if err != nil {
			return err
		}
		_ = pprof.StartCPUProfile(pf)
		defer pprof.StopCPUProfile()
	}
	start, cpu0 := time.Now(), cpuTime()
	if err := p.Sync(ctx); err != nil {
		return err
	}
	first, firstCPU := time.Since(start), cpuTime()-cpu0
	start = time.Now()
	debug.FreeOSMemory() // what flatnetd does after a full sync (proxy.Config.ReleaseMemory)
	release := time.Since(start)
	var lat []time.Duration
	for c := range changes {
		p.UpdateSlice(slice(c, eps, 7+c))
		start := time.Now()
		if err := p.Sync(ctx); err != nil {
			return err
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	// With nothing changed, a sync is the table check a running proxier
	// makes every second (verify.go).
	var idle []time.Duration
	for range 20 {
		start := time.Now()
		if err := p.Sync(ctx); err != nil {
			return err
		}
		idle = append(idle, time.Since(start))
	}
	slices.Sort(idle)
	restarted := newProxier(changes)
	defer restarted.Close()
	start = time.Now()
	if err := restarted.Sync(ctx); err != nil {
		return err
	}
	restart := time.Since(start)
	runtime.GC() // live heap, not what the last sync left for the collector
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Printf("services=%d endpoints/service=%d\n", services, eps)
	fmt.Printf("first full sync: %s (CPU of the process meanwhile: %s), then returning its memory to the OS (debug.FreeOSMemory): %s\n",
		first.Round(time.Millisecond), firstCPU.Round(time.Millisecond), release.Round(time.Millisecond))
	if len(lat) > 0 {
		fmt.Printf("sync after one EndpointSlice change: p50 %s p99 %s (n=%d)\n", lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)*99/100].Round(time.Millisecond), len(lat))
	}
	fmt.Printf("idle table check: p50 %s p99 %s (n=%d)\n", idle[len(idle)/2].Round(10*time.Microsecond), idle[len(idle)*99/100].Round(10*time.Microsecond), len(idle))
	fmt.Printf("full sync of a restarted proxier over that table (reading it back first): %s\n", restart.Round(time.Millisecond))
	fmt.Printf("Go heap in use after a GC (both proxiers alive): %d MiB\n", ms.HeapInuse>>20)
	if f := os.Getenv("MEMPROFILE"); f != "" { // what the two proxiers hold
		pf, err := os.Create(f)
		if err != nil {
			return err
		}
		defer pf.Close()
		return pprof.Lookup("heap").WriteTo(pf, 0)
	}
	return nil
}

// cpuTime is the user and system CPU time the process has used: a sync's
// cost apart from what else the machine runs.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
