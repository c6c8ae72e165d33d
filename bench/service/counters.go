package main

import (
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/flatnet-io/flatnet/internal/nsexec"
)

// kernelCounters are the TCP and conntrack counters of one network
// namespace that explain failed connects: SYN retransmits and timeouts
// (TcpExt, as nstat names them), failed attempts and resets sent (Tcp) and
// conntrack's insert failures, drops and INVALID verdicts (its per-CPU
// statistics, summed, as "ct_<name>").
type kernelCounters map[string]float64

var nstatNames = []string{"TcpExtTCPTimeouts", "TcpExtTCPSynRetrans", "TcpAttemptFails", "TcpOutRsts", "TcpExtListenDrops"}

// readCounters reads the counters from /proc on a thread inside nsPath
// (/proc/thread-self/net is the calling thread's namespace): no process
// is started, so reading them between two rounds of connections costs
// microseconds, not the tens of milliseconds of running nstat and
// conntrack -S, whose exits spilled into the next round.
func readCounters(nsPath string) kernelCounters {
	out := kernelCounters{}
	done := make(chan struct{})
	err := inNamespace(nsPath, func() {
		defer close(done)
		for _, f := range []string{"snmp", "netstat"} {
			if b, err := os.ReadFile("/proc/thread-self/net/" + f); err == nil {
				addSNMP(out, string(b))
			}
		}
		if b, err := os.ReadFile("/proc/thread-self/net/stat/nf_conntrack"); err == nil {
			addConntrackStat(out, string(b))
		}
	})
	if err != nil {
		return out
	}
	<-done
	return out
}

// addSNMP adds the wanted counters of /proc/net/snmp or netstat: pairs of
// lines "Prefix: names..." and "Prefix: values...".
func addSNMP(out kernelCounters, text string) {
	lines := strings.Split(text, "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) != len(values) || len(names) == 0 {
			continue
		}
		prefix := strings.TrimSuffix(names[0], ":")
		for j := 1; j < len(names); j++ {
			if k := prefix + names[j]; slices.Contains(nstatNames, k) {
				v, _ := strconv.ParseFloat(values[j], 64)
				out[k] = v
			}
		}
	}
}

// addConntrackStat adds /proc/net/stat/nf_conntrack: a header of names and
// a line of hexadecimal values per CPU ("entries" is the table's size, the
// same on every line, and not a counter).
func addConntrackStat(out kernelCounters, text string) {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if len(lines) < 2 {
		return
	}
	names := strings.Fields(lines[0])
	for _, line := range lines[1:] {
		for j, v := range strings.Fields(line) {
			if j >= len(names) || names[j] == "entries" {
				continue
			}
			n, _ := strconv.ParseUint(v, 16, 64)
			out["ct_"+names[j]] += float64(n)
		}
	}
}

// delta is what grew between two readings, as "name +n" pairs.
func (after kernelCounters) delta(before kernelCounters) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(after)) {
		if d := after[k] - before[k]; d != 0 {
			parts = append(parts, fmt.Sprintf("%s +%.0f", k, d))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// add adds what grew from before to after.
func (sum kernelCounters) add(after, before kernelCounters) {
	for k, v := range after {
		sum[k] += v - before[k]
	}
}

// vipFlows counts node-1's conntrack entries toward addr (a ClusterIP and
// port) by TCP state and by whether they were DNATed: an entry that was
// never NATed keeps every later packet of its tuple away from the proxy's
// DNAT, so a new connection that reuses its source port fails.
func vipFlows(nodeNS, addr string) map[string]int {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil
	}
	out := map[string]int{}
	b, err := nsexec.Command(nodeNS, "conntrack", "-L", "-p", "tcp", "--orig-dst", ap.Addr().String(),
		"--orig-port-dst", strconv.Itoa(int(ap.Port()))).Output()
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != "tcp" {
			continue
		}
		var srcs []string
		for _, kv := range f {
			if v, ok := strings.CutPrefix(kv, "src="); ok {
				srcs = append(srcs, v)
			}
		}
		nat := "nat"
		if len(srcs) == 2 && srcs[1] == ap.Addr().String() {
			nat = "no-nat"
		}
		out[f[3]+"/"+nat]++
	}
	return out
}
