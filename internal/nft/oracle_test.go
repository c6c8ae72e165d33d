package nft

import (
	"context"
	"iter"
	"maps"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/netnstest"
)

// Every form of rule, set and element the engines write, committed over
// netlink and through nft: the kernel must hold the same thing — the same
// expressions, registers and data (`nft --debug=netlink list table`), the
// same declarations, comments and elements (`nft list table`) — before and
// after a second transaction that flushes, deletes and adds.
func TestNetlinkCommitsWhatNftCommits(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("the nft binary is the oracle here: ./scripts/setup.sh installs it")
	}
	netnstest.Run(t, "nfto", func() error {
		// not in subtests: they run on other threads, outside the namespace
		for _, fam := range []Family{IPv4, IPv6} {
			bothWays(t, fam, oracleTx, oracleChange)
		}
		bothWays(t, Bridge, bridgeTx, bridgeChange)
		return nil
	})
}

// oracleRules are the rules, in IPv4; ip6ify writes them for IPv6.
var oracleRules = []struct{ chain, rule string }{
	{"pre", "jump services"},
	{"forward-hook", "ct state invalid drop"},
	{"forward-hook", "jump checks"},
	{"services", "ip daddr @cluster-ips ip saddr != 10.128.0.0/10 jump marker"},
	{"services", "ip daddr @cluster-ips jump marker"},
	{"services", "ip daddr . meta l4proto . th dport vmap @service-ips"},
	{"services", "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @nodeports"},
	{"marker", "meta mark set meta mark or 0x4000"},
	{"post", "ct status dnat ip saddr . ip daddr @hairpin jump marker"},
	{"post", "meta mark and 0x4000 == 0 return"},
	{"post", "meta mark set meta mark xor 0x4000"},
	{"post", "masquerade fully-random"},
	{"post", "ip saddr != 10.128.0.0/10 return"},
	{"post", "ip daddr 10.128.0.0/10 return"},
	{"post", "ip daddr @nodes return"},
	{"post", "masquerade"},
	{"checks", "ct state new ip daddr . meta l4proto . th dport vmap @no-endpoints"},
	{"checks", "ct state new fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports"},
	{"checks", "ct state new ip daddr @cluster-ips goto rejecting"},
	{"checks", "ct state established,related accept"},
	{"rejecting", "meta l4proto tcp reject with tcp reset"},
	{"rejecting", "reject"},
	{"slot-0", "dnat ip to ip daddr . meta l4proto . th dport map @endpoints-0"},
	{"nodeport-slot-0", "dnat ip to meta l4proto . th dport map @nodeport-endpoints-0"},
	{"lb-2", "numgen random mod 2 vmap { 0 : goto slot-0 , 1 : goto nodeport-slot-0 }"},
	{"lb-2", "counter"},
	{"svc", "ip saddr @affinity goto ep"},
	{"svc", "numgen random mod 3 == 0 meta l4proto tcp dnat to 10.244.1.2:8080"},
	{"svc", "meta l4proto udp dnat to 10.244.1.3:53"},
	{"ep", "update @affinity { ip saddr }"},
	{"fw", "ip saddr 192.168.0.0/16 goto svc"},
	{"fw", "ip saddr 10.1.2.3 goto svc"},
	{"fw", "ip saddr 0.0.0.0/0 goto svc"},
	{"fw", "ip saddr 172.16.0.0/12 goto svc"},
	{"fw", "fib saddr type local jump marker"},
	{"fw", "fib saddr type local goto svc"},
	{"fw", "drop"},
	{"isolation", "ip daddr @isolated jump ingress"},
	{"ingress", "meta l4proto tcp ip daddr . ip saddr . th dport @allow-tcp return"},
	{"ingress", "meta l4proto sctp ip daddr . ip saddr . th dport @allow-tcp return"},
	{"ingress", "ip daddr . ip saddr @allow-any return"},
	{"ingress", "icmpv6 type nd-neighbor-solicit accept"},
	{"ingress", "icmpv6 type nd-neighbor-advert accept"},
	{"ingress", "counter drop"},
	{"ingress", "counter name ip daddr map @pod-counters"},
	{"ingress", "ip daddr @isolated counter name ip daddr . ip saddr map @pair-counters drop"},
	{"ingress", "counter name spoofed"},
	{"ingress", "ip daddr @isolated limit rate 20/second log prefix \"flatnet:ingress\" group 7"},
	{"ingress", "limit rate 100/minute burst 20 packets log group 3"},
}

var ip6ify = strings.NewReplacer("10.244.0.0/16", "fd00:244::/48",
	"10.9.0.1-10.9.0.7", "fd00:9::1-fd00:9::7", "0.0.0.0-255.255.255.255", "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
	"10.245.0.0/16", "fd00:245::/48", "ip ", "ip6 ", "ipv4_addr", "ipv6_addr", "10.128.0.0/10", "fd00:128::/57",
	"127.0.0.0/8", "::1", "10.244.1.2:8080", "[fd00:244::2]:8080", "10.244.1.3:53", "[fd00:244::3]:53",
	"192.168.0.0/16", "fd00:168::/48", "10.1.2.3", "fd00::1:2:3", "0.0.0.0/0", "::/0", "172.16.0.0/12", "fd00::/7",
	"10.96.0.10", "fd00:96::10", "10.96.0.11", "fd00:96::11", "10.96.0.12", "fd00:96::12", "10.244.1.2", "fd00:244::2", "10.244.1.3", "fd00:244::3")

func oracleTx(tx *Tx, fam Family) {
	v := func(s string) string {
		if fam == IPv6 {
			return ip6ify.Replace(s)
		}
		return s
	}
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("a table (" + fam.String() + ")")})
	maps := map[string]string{
		"service-ips": "ipv4_addr . inet_proto . inet_service : verdict", "nodeports": "inet_proto . inet_service : verdict", "no-endpoint-nodeports": "inet_proto . inet_service : verdict",
		"no-endpoints": "ipv4_addr . inet_proto . inet_service : verdict", "endpoints-0": "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service",
		"nodeport-endpoints-0": "inet_proto . inet_service : ipv4_addr . inet_service",
	}
	for _, name := range slices.Sorted(mapKeys(maps)) {
		typ := maps[name]
		tx.Add(&knftables.Map{Name: name, Type: v(typ), Comment: knftables.PtrTo("map " + name)})
	}
	tx.Add(&knftables.Set{Name: "cluster-ips", Type: v("ipv4_addr"), Comment: knftables.PtrTo("every ClusterIP")})
	tx.Add(&knftables.Set{Name: "hairpin", Type: v("ipv4_addr . ipv4_addr")})
	tx.Add(&knftables.Set{Name: "nodes", Type: v("ipv4_addr")})
	tx.Add(&knftables.Set{Name: "spare", Type: v("ipv4_addr . inet_service")})
	interval := []knftables.SetFlag{knftables.IntervalFlag}
	tx.Add(&knftables.Set{Name: "isolated", Type: v("ipv4_addr")})
	tx.Add(&knftables.Set{Name: "allow-tcp", Type: v("ipv4_addr . ipv4_addr . inet_service"), Flags: interval, Comment: knftables.PtrTo("pod . peers . ports")})
	tx.Add(&knftables.Set{Name: "allow-any", Type: v("ipv4_addr . ipv4_addr"), Flags: interval})
	tx.Add(&knftables.Set{Name: "attached", Type: v("ifname . ipv4_addr"), Comment: knftables.PtrTo("host veth . pod address")})
	for _, c := range []string{"spoofed", "in-1", "in-2"} {
		tx.Add(&knftables.Counter{Name: c})
	}
	tx.Add(&knftables.Counter{Name: "commented", Comment: knftables.PtrTo("x/a ingress")})
	tx.Add(&knftables.Map{Name: "pod-counters", Type: v("ipv4_addr : counter"), Comment: knftables.PtrTo("a counter per pod")})
	tx.Add(&knftables.Map{Name: "pair-counters", Type: v("ipv4_addr . ipv4_addr : counter")})
	tx.Add(&knftables.Set{Name: "affinity", Type: v("ipv4_addr"), Flags: []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag},
		Timeout: knftables.PtrTo(3 * time.Hour), Comment: knftables.PtrTo("clients of 10.244.1.2:8080 (10800s affinity)")})
	hook := func(name string, typ knftables.BaseChainType, h knftables.BaseChainHook, prio knftables.BaseChainPriority) {
		tx.Add(&knftables.Chain{Name: name, Type: &typ, Hook: &h, Priority: &prio})
	}
	hook("pre", knftables.NATType, knftables.PreroutingHook, knftables.DNATPriority)
	hook("post", knftables.NATType, knftables.PostroutingHook, knftables.SNATPriority)
	hook("forward-hook", knftables.FilterType, knftables.ForwardHook, knftables.FilterPriority+"-10")
	hook("isolation", knftables.FilterType, knftables.ForwardHook, knftables.FilterPriority)
	for _, c := range []string{"services", "marker", "checks", "rejecting", "slot-0", "nodeport-slot-0", "lb-2", "svc", "ep", "fw", "ingress"} {
		tx.Add(&knftables.Chain{Name: c})
	}
	tx.Add(&knftables.Chain{Name: "commented", Comment: knftables.PtrTo("a chain")})
	for _, r := range oracleRules {
		tx.Add(&knftables.Rule{Chain: r.chain, Rule: v(r.rule)})
	}
	tx.Add(&knftables.Rule{Chain: "commented", Rule: "drop", Comment: knftables.PtrTo("a rule")})
	for _, e := range []*knftables.Element{
		{Map: "service-ips", Key: []string{"10.96.0.10", "tcp", "80"}, Value: []string{"goto lb-2"}, Comment: knftables.PtrTo("ns/web/tcp/http")},
		{Map: "service-ips", Key: []string{"10.96.0.11", "udp", "53"}, Value: []string{"goto svc"}},
		{Map: "no-endpoints", Key: []string{"10.96.0.11", "tcp", "81"}, Value: []string{"drop"}},
		{Map: "nodeports", Key: []string{"tcp", "30080"}, Value: []string{"goto lb-2"}},
		{Map: "endpoints-0", Key: []string{"10.96.0.10", "tcp", "80"}, Value: []string{"10.244.1.2", "8080"}},
		{Map: "nodeport-endpoints-0", Key: []string{"udp", "30053"}, Value: []string{"10.244.1.3", "53"}},
		{Set: "cluster-ips", Key: []string{"10.96.0.10"}},
		{Set: "cluster-ips", Key: []string{"10.96.0.11"}},
		{Set: "hairpin", Key: []string{"10.244.1.2", "10.244.1.2"}},
		{Set: "isolated", Key: []string{"10.244.1.2"}},
		{Set: "allow-tcp", Key: []string{"10.244.1.2", "10.244.0.0/16", "80-90"}},
		{Set: "allow-tcp", Key: []string{"10.244.1.2", "10.245.0.0/16", "0-65535"}},
		{Set: "allow-tcp", Key: []string{"10.244.1.3", "10.9.0.1-10.9.0.7", "443"}},
		{Set: "allow-any", Key: []string{"10.244.1.3", "0.0.0.0-255.255.255.255"}},
		{Set: "allow-any", Key: []string{"10.244.1.2", "10.9.0.1-10.9.0.7"}},
		{Set: "attached", Key: []string{"fn0123456789abc", "10.244.1.2"}, Comment: knftables.PtrTo("0f2b7c1e-4d6a-4b8e-9a51-3c2d1e0f9a8b")},
		{Set: "attached", Key: []string{"fn1", "10.244.1.3"}},
		{Map: "pod-counters", Key: []string{"10.244.1.2"}, Value: []string{"in-1"}},
		{Map: "pod-counters", Key: []string{"10.244.1.3"}, Value: []string{"in-2"}},
		{Map: "pair-counters", Key: []string{"10.244.1.3", "10.244.1.2"}, Value: []string{"in-2"}},
	} {
		for i := range e.Key {
			e.Key[i] = v(e.Key[i])
		}
		for i := range e.Value {
			e.Value[i] = v(e.Value[i])
		}
		tx.Add(e)
	}
}

// oracleChange flushes, deletes and adds, as a partial sync does.
func oracleChange(tx *Tx, fam Family) {
	v := func(s string) string {
		if fam == IPv6 {
			return ip6ify.Replace(s)
		}
		return s
	}
	tx.Flush(&knftables.Chain{Name: "svc"})
	tx.Add(&knftables.Rule{Chain: "svc", Rule: v("meta l4proto tcp dnat to 10.244.1.3:53")})
	tx.Delete(&knftables.Element{Map: "service-ips", Key: []string{v("10.96.0.10"), "tcp", "80"}})
	tx.Add(&knftables.Element{Map: "service-ips", Key: []string{v("10.96.0.10"), "tcp", "80"}, Value: []string{"goto svc"}})
	tx.Flush(&knftables.Set{Name: "cluster-ips"})
	tx.Add(&knftables.Element{Set: "cluster-ips", Key: []string{v("10.96.0.12")}})
	tx.Flush(&knftables.Chain{Name: "fw"})
	tx.Delete(&knftables.Chain{Name: "fw"})
	tx.Delete(&knftables.Set{Name: "spare"})
	tx.Flush(&knftables.Chain{Name: "lb-2"})
	tx.Delete(&knftables.Element{Map: "nodeports", Key: []string{"tcp", "30080"}})
	tx.Delete(&knftables.Chain{Name: "lb-2"})
	// an interval out, and one overlapping it in, in one transaction
	tx.Delete(&knftables.Element{Set: "allow-tcp", Key: []string{v("10.244.1.2"), v("10.244.0.0/16"), "80-90"}})
	tx.Add(&knftables.Element{Set: "allow-tcp", Key: []string{v("10.244.1.2"), v("10.244.0.0/16"), "79-100"}})
	tx.Add(&knftables.Element{Set: "allow-any", Key: []string{v("10.244.1.2"), v("10.244.1.3")}})
	// a counter out of its map, then gone; another one new
	tx.Delete(&knftables.Element{Map: "pod-counters", Key: []string{v("10.244.1.3")}})
	tx.Delete(&knftables.Element{Map: "pair-counters", Key: []string{v("10.244.1.3"), v("10.244.1.2")}})
	tx.Delete(&knftables.Counter{Name: "in-2"})
	tx.Add(&knftables.Counter{Name: "in-3"})
	tx.Add(&knftables.Element{Map: "pod-counters", Key: []string{v("10.244.1.3")}, Value: []string{"in-3"}})
}

// bridgeRules are the rules of a bridge table: IPv4, IPv6 and ARP fields
// behind their protocol checks, interface names.
var bridgeRules = []struct{ chain, rule string }{
	{"pre", "iifname @ports jump from-pod"},
	{"from-pod", "iifname . ip saddr @sources-v4 return"},
	{"from-pod", "iifname . ip6 saddr @sources-v6 return"},
	{"from-pod", "ip6 saddr fe80::/10 return"},
	{"from-pod", "ip6 saddr :: return"},
	{"from-pod", "iifname . arp saddr ip @sources-v4 return"},
	{"from-pod", "arp saddr ip 0.0.0.0 return"},
	{"from-pod", "meta protocol ip counter drop"},
	{"from-pod", "meta protocol arp drop"},
	{"from-pod", "ip saddr 10.244.0.0/16 ip daddr 10.244.1.2 drop"},
	{"from-pod", "oifname fn1 drop"},
}

func bridgeTx(tx *Tx, _ Family) {
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("a bridge table")})
	tx.Add(&knftables.Set{Name: "ports", Type: "ifname", Comment: knftables.PtrTo("pod ports")})
	tx.Add(&knftables.Set{Name: "sources-v4", Type: "ifname . ipv4_addr"})
	tx.Add(&knftables.Set{Name: "sources-v6", Type: "ifname . ipv6_addr"})
	typ, hook, prio := knftables.FilterType, knftables.PreroutingHook, knftables.BaseChainPriority("-300")
	tx.Add(&knftables.Chain{Name: "pre", Type: &typ, Hook: &hook, Priority: &prio})
	tx.Add(&knftables.Chain{Name: "from-pod"})
	for _, r := range bridgeRules {
		tx.Add(&knftables.Rule{Chain: r.chain, Rule: r.rule})
	}
	for _, e := range []*knftables.Element{
		{Set: "ports", Key: []string{"fn0123456789abc"}, Comment: knftables.PtrTo("x/a")},
		{Set: "sources-v4", Key: []string{"fn0123456789abc", "10.244.1.2"}},
		{Set: "sources-v6", Key: []string{"fn0123456789abc", "fd00:244::2"}},
	} {
		tx.Add(e)
	}
}

func bridgeChange(tx *Tx, _ Family) {
	tx.Delete(&knftables.Element{Set: "sources-v4", Key: []string{"fn0123456789abc", "10.244.1.2"}})
	tx.Add(&knftables.Element{Set: "sources-v4", Key: []string{"fn0123456789abc", "10.244.1.3"}})
	tx.Flush(&knftables.Set{Name: "ports"})
	tx.Add(&knftables.Element{Set: "ports", Key: []string{"fn1"}})
}

func bothWays(t *testing.T, fam Family, steps ...func(*Tx, Family)) {
	ctx := context.Background()
	nl, err := New(fam, "fn-via-netlink")
	if err != nil {
		t.Fatal(err)
	}
	for i, step := range steps {
		viaNft := NewFake(fam, "fn-via-nft").NewTx()
		step(viaNft, fam)
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(viaNft.fake.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s step %d through nft: %v\n%s", fam, i, err, out)
		}
		tx := nl.NewTx()
		step(tx, fam)
		if err := nl.Run(ctx, tx); err != nil {
			t.Fatalf("%s step %d over netlink: %v", fam, i, err)
		}
		want, got := kernelView(t, fam, "fn-via-nft"), kernelView(t, fam, "fn-via-netlink")
		if want != got {
			t.Errorf("%s step %d: over netlink the kernel holds what nft does not (-nft +netlink):\n%s", fam, i, lineDiff(want, got))
		}
		for _, must := range []string{"lookup reg 1 set __map", "objref sreg 1 set pod-counters", "[ objref type 1 name spoofed ]",
			"log prefix flatnet:ingress group 7", "limit rate 100/minute burst 20", "counter commented"} {
			if !strings.Contains(want, must) && i == 0 && fam != Bridge {
				t.Errorf("the kernel does not hold %q:\n%s", must, want)
			}
		}
	}
}

var (
	ruleHead = regexp.MustCompile(`(?m)^((?:ip6?|bridge) \S+ \S+)( \d+)+$`)
	anonName = regexp.MustCompile(`__(map|set)\d+`)
	elements = regexp.MustCompile(`(?s)elements = \{[^}]*\}`)
)

// kernelView is what the kernel holds of a table, in a form that does not
// depend on its name, on handles, or on the order of hashed elements.
func kernelView(t *testing.T, fam Family, table string) string {
	out, err := exec.Command("nft", "--debug=netlink", "list", "table", string(fam.NFT()), table).CombinedOutput()
	if err != nil {
		t.Fatalf("list %s: %v\n%s", table, err, out)
	}
	s := strings.ReplaceAll(string(out), table, "T")
	s = ruleHead.ReplaceAllString(s, "$1")
	s = anonName.ReplaceAllString(s, "__$1")
	// the element lines of each set's block, sorted
	lines := strings.Split(s, "\n")
	for i := 0; i < len(lines); {
		j := i
		for j < len(lines) && strings.HasPrefix(lines[j], "\telement ") {
			j++
		}
		slices.Sort(lines[i:j])
		i = max(j, i+1)
	}
	s = strings.Join(lines, "\n")
	// the listing's element blocks: their elements sorted
	return elements.ReplaceAllStringFunc(s, func(b string) string {
		els := strings.Split(strings.Join(strings.Fields(b[len("elements = {"):len(b)-1]), " "), ", ")
		slices.Sort(els)
		return "elements = { " + strings.Join(els, ", ") + " }"
	})
}

// lineDiff lists the lines only one side has, in order (a short report).
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if count[l] > 0 {
			out = append(out, "-"+l)
			count[l]--
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if count[l] < 0 {
			out = append(out, "+"+l)
			count[l]++
		}
	}
	return strings.Join(out, "\n")
}

func mapKeys(m map[string]string) iter.Seq[string] { return maps.Keys(m) }
