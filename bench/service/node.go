package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/flatnet-io/flatnet/internal/egress"
	"github.com/flatnet-io/flatnet/internal/nsexec"
)

// nodeSettings are the kernel settings node-1 gets before every proxy
// starts, so that each runs on the same node whatever ran before it:
// what a kubeadm node has (IP forwarding, bridged traffic through the IP
// hooks; kubeadm's preflight checks both) and the conntrack timeouts
// kube-proxy sets at start (its defaults: established 24 h, CLOSE_WAIT
// 1 h; per namespace, so flatnet gets them too). route_localnet and
// tcp_be_liberal go back to the kernel's 0: kube-proxy's iptables mode sets
// route_localnet=1 itself (NodePorts on 127.0.0.1), as it does on a real
// node, and that must not carry over to the next proxy.
var nodeSettings = []struct{ key, value string }{
	{"net.ipv4.ip_forward", "1"},
	{"net.ipv6.conf.all.forwarding", "1"},
	{"net.bridge.bridge-nf-call-iptables", "1"},
	{"net.bridge.bridge-nf-call-ip6tables", "1"},
	{"net.netfilter.nf_conntrack_tcp_timeout_established", "86400"},
	{"net.netfilter.nf_conntrack_tcp_timeout_close_wait", "3600"},
	{"net.netfilter.nf_conntrack_tcp_be_liberal", "0"},
	{"net.ipv4.conf.all.route_localnet", "0"},
}

// resetNode brings node-1 back to the state every proxy starts from: no
// nftables table but flatnetd's own egress masquerade (kube-proxy
// --cleanup leaves iptables-nft's base chains and KUBE-FIREWALL behind, a
// rule every later packet would pass), no conntrack entry of an earlier
// run (a flow the previous proxy NATed, a SYN sent before the rules
// existed) and nodeSettings. It returns the tables it had to delete.
func resetNode(nodeNS string) ([]string, error) {
	left, err := foreignTables(nodeNS)
	if err != nil {
		return nil, err
	}
	for _, t := range left {
		if err := runIn(nodeNS, "nft", "delete", "table", strings.Fields(t)[0], strings.Fields(t)[1]); err != nil {
			return nil, err
		}
	}
	if again, err := foreignTables(nodeNS); err != nil || len(again) > 0 {
		return nil, fmt.Errorf("node-1 still has tables %v after cleanup (%v)", again, err)
	}
	// conntrack -F exits 1 when the table was empty already.
	_ = runIn(nodeNS, "conntrack", "-F")
	for _, s := range nodeSettings {
		if err := runIn(nodeNS, "sysctl", "-q", "-w", s.key+"="+s.value); err != nil {
			return nil, err
		}
	}
	return left, nil
}

// foreignTables lists node-1's nftables tables ("family name") that are
// not flatnetd's egress masquerade, the one table every proxy shares.
func foreignTables(nodeNS string) ([]string, error) {
	out, err := outputIn(nodeNS, "nft", "list", "tables")
	if err != nil {
		return nil, err
	}
	var tables []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "table" && f[2] != egress.Table {
			tables = append(tables, f[1]+" "+f[2])
		}
	}
	return tables, nil
}

// readSettings is node-1's current value of each of nodeSettings and of
// the machine-wide conntrack limit, for the log: the proxies may change
// them after they start (kube-proxy's iptables mode sets route_localnet).
func readSettings(nodeNS string) string {
	keys := []string{"net.netfilter.nf_conntrack_max"}
	for _, s := range nodeSettings {
		keys = append(keys, s.key)
	}
	out, err := outputIn(nodeNS, "sysctl", keys...)
	if err != nil {
		return err.Error()
	}
	lines := slices.DeleteFunc(strings.Split(out, "\n"), func(s string) bool { return s == "" })
	return strings.Join(lines, ", ")
}

func outputIn(nsPath, name string, args ...string) (string, error) {
	b, err := nsexec.Command(nsPath, name, args...).Output()
	if err != nil {
		return "", fmt.Errorf("%s %v: %w", name, args, err)
	}
	return string(b), nil
}
