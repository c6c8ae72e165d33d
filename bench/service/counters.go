package main

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/flatnet-io/flatnet/internal/nsexec"
)

// kernelCounters are the TCP and conntrack counters of one network
// namespace that explain failed connects: SYN retransmits and timeouts
// (nstat) and conntrack's insert failures, drops and INVALID verdicts
// (conntrack -S, summed over CPUs).
type kernelCounters map[string]float64

var nstatNames = []string{"TcpExtTCPTimeouts", "TcpExtTCPSynRetrans", "TcpAttemptFails", "TcpOutRsts", "TcpExtListenDrops"}

func readCounters(nsPath string) kernelCounters {
	out := kernelCounters{}
	if b, err := nsexec.Command(nsPath, "nstat", append([]string{"-asz"}, nstatNames...)...).Output(); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
				v, _ := strconv.ParseFloat(f[1], 64)
				out[f[0]] = v
			}
		}
	}
	if b, err := nsexec.Command(nsPath, "conntrack", "-S").Output(); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			for _, kv := range strings.Fields(line) {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "cpu" {
					continue
				}
				n, _ := strconv.ParseFloat(v, 64)
				out["ct_"+k] += n
			}
		}
	}
	return out
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
