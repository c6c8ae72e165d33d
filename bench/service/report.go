package main

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"
)

// report prints the table of the proxies whose warm-up connections all
// worked, then why any other was left out, then the ratios.
func report(rows []row, runs rateRuns) {
	if len(rows) == 0 {
		return
	}
	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "services\tproxy\tstart->working\tfull sync\tRSS MiB\tprog. latency p50\tp99\twarm-up failed\tconn/s via ClusterIP\tp50\tfailed\tconn/s to pod\tp50\tfrom a pod: via ClusterIP\tfailed\tto pod\t")
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }
	us := func(d time.Duration) string { return fmt.Sprintf("%d µs", d.Microseconds()) }
	for _, r := range rows {
		if !r.measured() {
			continue
		}
		full := "-"
		if r.fullSync > 0 {
			full = fmt.Sprintf("%.2f s", r.fullSync)
		}
		lat99 := ms(r.latP99)
		if r.programmingFailures != nil {
			lat99 += " (" + r.programmingFailures.Error() + ")"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%.0f\t%s\t%s\t%d\t%.0f\t%s\t%d\t%.0f\t%s\t%.0f\t%d\t%.0f\t\n", r.size, r.proxy, ms(r.startToWorking), full, r.rssMiB,
			ms(r.latP50), lat99, r.warmNode.failed+r.warmPod.failed, r.viaVIP.perSec, us(r.viaVIP.p50), r.viaVIP.failures, r.direct.perSec, us(r.direct.p50),
			r.podVIP.perSec, r.podVIP.failures, r.podDirect.perSec)
	}
	_ = w.Flush()
	for _, r := range rows {
		if !r.measured() {
			fmt.Printf("NOT IN THE TABLE: %s with %d Services: warm-up through the ClusterIP from node-1 %s; from a pod %s; %d \"forbidden\" lines in its log\n",
				r.proxy, r.size, r.warmNode, r.warmPod, r.forbidden)
		}
	}
	fmt.Printf("warm-up: one connection through the ClusterIP from every source port of the client (node-1 and a pod); rates: %d workers pinned to CPUs, %d pairs of %s rounds\n",
		runs.workers, runs.pairs, runs.round)
	reportProgramming(rows)
	reportRatios(rows)
}

// reportProgramming compares flatnet with kube-proxy nftables at each size.
func reportProgramming(rows []row) {
	find := func(size int, proxy string) *row {
		for i := range rows {
			if rows[i].size == size && rows[i].proxy == proxy {
				return &rows[i]
			}
		}
		return nil
	}
	seen := map[int]bool{}
	for _, r := range rows {
		if seen[r.size] {
			continue
		}
		seen[r.size] = true
		ours, nft := find(r.size, "flatnet"), find(r.size, "kube-proxy-nftables")
		if ours != nil && nft != nil && nft.latP99 > 0 && nft.rssMiB > 0 {
			fmt.Printf("%d Services: programming latency p99 flatnet/kube-proxy-nftables = %.2f; RSS ratio %.2f\n",
				r.size, float64(ours.latP99)/float64(nft.latP99), ours.rssMiB/nft.rssMiB)
		}
	}
}

// reportRatios prints, per measured row, the paired ratio of connection
// rates through the ClusterIP and straight to the pods, with its interval.
func reportRatios(rows []row) {
	first := map[string]*row{} // each proxy's measured row at the smallest size
	for i := range rows {
		r := &rows[i]
		if !r.measured() {
			continue
		}
		if first[r.proxy] == nil {
			first[r.proxy] = r
		}
		fmt.Printf("%d Services, %s: via ClusterIP / to pod = %s from node-1, %s from a pod\n",
			r.size, r.proxy, r.vsDirect, r.podVsDirect)
		if f := first[r.proxy]; f != r && f.viaVIP.perSec > 0 && f.podVIP.perSec > 0 {
			fmt.Printf("%d Services, %s: via ClusterIP vs %d Services (median rounds, minutes apart) = %.2f from node-1, %.2f from a pod\n",
				r.size, r.proxy, f.size, r.viaVIP.perSec/f.viaVIP.perSec, r.podVIP.perSec/f.podVIP.perSec)
		}
	}
}
