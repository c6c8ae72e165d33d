package main

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/knftables"
)

// The ruleset mirrors what internal/proxy rendered for ClusterIP Services
// with a cluster CIDR before its shared-chain design (balance.go), when
// this comparison was made: a nat prerouting base chain dispatching through one verdict
// map keyed by "address . protocol . port", a chain per Service that marks
// traffic from outside the cluster CIDR for masquerade and picks an endpoint
// with lbChain's cascade of "numgen random mod k == 0" rules (no anonymous
// sets), and the map element pointing at that chain.
const (
	servicesChain  = "services"
	markMasqChain  = "mark-for-masquerade"
	serviceIPsMap  = "service-ips"
	mapType        = "ipv4_addr . inet_proto . inet_service : verdict"
	clusterCIDR    = "10.244.0.0/16"
	masqBit        = 0x4000
	servicePort    = 80
	targetPort     = 8080
	endpointsPer   = 2
	maxServices    = 64000 // 10.96.0.1 .. 10.96.255.250
	libKnft        = "knftables"
	libGnft        = "google/nftables"
	knftTableName  = "fnbench-knft"
	gnftTableName  = "fnbench-gnft"
	updateGenScale = 7 // endpoint addresses move by this much per update generation
)

// shape is how a Service's endpoints are laid out in chains.
type shape string

const (
	// epChains: the Service chain's cascade jumps (goto) to one chain per
	// endpoint that DNATs; 3 chains per Service with 2 endpoints. This is
	// how the proxy lays out a Service with session affinity (without the
	// affinity set and its update rule).
	epChains shape = "epchains"
	// inline: the cascade DNATs in the Service chain itself; 1 chain per
	// Service. This is what the proxy rendered without session affinity
	// until Services became map elements.
	inline shape = "inline"
)

func parseShape(s string) (shape, error) {
	switch sh := shape(strings.TrimSpace(s)); sh {
	case epChains, inline:
		return sh, nil
	}
	return "", fmt.Errorf("unknown shape %q (epchains, inline)", s)
}

// chainsPer is the number of chains a Service has in shape sh.
func (sh shape) chainsPer() int {
	if sh == epChains {
		return 1 + endpointsPer
	}
	return 1
}

// service is one synthetic ClusterIP Service: port 80/TCP, 2 endpoints on 8080.
type service struct {
	i   int
	vip netip.Addr
}

func makeServices(n int) []service {
	out := make([]service, n)
	for i := range out {
		out[i] = service{i: i, vip: netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)})}
	}
	return out
}

// endpoints are the Service's endpoint addresses in update generation gen
// (0: the full load).
func (s service) endpoints(gen int) []netip.Addr {
	out := make([]netip.Addr, endpointsPer)
	for e := range out {
		n := s.i*endpointsPer + e + gen*updateGenScale
		out[e] = netip.AddrFrom4([4]byte{10, 244, byte(n / 250 % 256), byte(n%250 + 1)})
	}
	return out
}

func (s service) svcChain() string { return "svc-" + strconv.Itoa(s.i) }

func (s service) epChain(e int) string { return "ep-" + strconv.Itoa(s.i) + "-" + strconv.Itoa(e) }

// chainSpec and ruleSpec describe a Service's chains once, for both
// libraries to render.
type chainSpec struct {
	name  string
	rules []ruleSpec
}

type ruleSpec struct {
	masq   bool       // ip saddr != clusterCIDR jump mark-for-masquerade
	mod    int        // numgen random mod <mod> == 0 (0: no condition)
	goTo   string     // goto <chain>
	dnatTo netip.Addr // meta l4proto tcp dnat to <addr>:8080
}

// chains is what lbChain (and, for epchains, endpointChain) would emit for
// the Service with the endpoints of generation gen.
func (s service) chains(sh shape, gen int) []chainSpec {
	eps := s.endpoints(gen)
	svc := chainSpec{name: s.svcChain(), rules: []ruleSpec{{masq: true}}}
	var out []chainSpec
	for e, ep := range eps {
		r := ruleSpec{}
		if left := len(eps) - e; left > 1 {
			r.mod = left
		}
		if sh == epChains {
			r.goTo = s.epChain(e)
			out = append(out, chainSpec{name: s.epChain(e), rules: []ruleSpec{{dnatTo: ep}}})
		} else {
			r.dnatTo = ep
		}
		svc.rules = append(svc.rules, r)
	}
	return append([]chainSpec{svc}, out...)
}

// text is the rule in nft syntax, as the proxy writes it.
func (r ruleSpec) text() string {
	if r.masq {
		return "ip saddr != " + clusterCIDR + " jump " + markMasqChain
	}
	var parts []string
	if r.mod > 0 {
		parts = append(parts, "numgen random mod "+strconv.Itoa(r.mod)+" == 0")
	}
	if r.goTo != "" {
		parts = append(parts, "goto "+r.goTo)
	}
	if r.dnatTo.IsValid() {
		parts = append(parts, "meta l4proto tcp dnat to "+netip.AddrPortFrom(r.dnatTo, targetPort).String())
	}
	return strings.Join(parts, " ")
}

func (s service) mapKey() []string {
	return []string{s.vip.String(), "tcp", strconv.Itoa(servicePort)}
}

// backend is one library programming the ruleset into its own table.
type backend interface {
	name() string
	table() string
	load(sh shape, svcs []service) error         // the whole table, one transaction
	update(sh shape, s service, gen int) error   // one Service's chains and element, one transaction
	drop() error                                 // delete the table if it exists
	timed(f func() error) (time.Duration, error) // run f where this library runs, and time it
}

// rssLoader can do a full load and tell the peak memory of the process
// that did it.
type rssLoader interface {
	loadRSS(sh shape, svcs []service) (float64, error)
}

// knft drives sigs.k8s.io/knftables as the proxy does: a Transaction run
// with `nft -f -`.
type knft struct{ nft knftables.Interface }

func newKnft() (*knft, error) {
	nft, err := knftables.New(knftables.IPv4Family, knftTableName)
	if err != nil {
		return nil, err
	}
	return &knft{nft: nft}, nil
}

func (k *knft) name() string                                { return libKnft }
func (k *knft) timed(f func() error) (time.Duration, error) { return timeHere(f) }
func (k *knft) table() string                               { return knftTableName }

func (k *knft) loadTx(sh shape, svcs []service) *knftables.Transaction {
	tx := k.nft.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Add(&knftables.Chain{Name: servicesChain, Type: knftables.PtrTo(knftables.NATType),
		Hook: knftables.PtrTo(knftables.PreroutingHook), Priority: knftables.PtrTo(knftables.DNATPriority)})
	tx.Add(&knftables.Chain{Name: markMasqChain})
	tx.Add(&knftables.Map{Name: serviceIPsMap, Type: mapType})
	tx.Add(&knftables.Rule{Chain: servicesChain, Rule: "ip daddr . meta l4proto . th dport vmap @" + serviceIPsMap})
	tx.Add(&knftables.Rule{Chain: markMasqChain, Rule: fmt.Sprintf("meta mark set meta mark or %#x", masqBit)})
	for _, s := range svcs {
		k.addService(tx, sh, s, 0)
	}
	return tx
}

func (k *knft) addService(tx *knftables.Transaction, sh shape, s service, gen int) {
	chains := s.chains(sh, gen)
	for _, c := range chains { // first the chains: a rule can only goto one that exists
		tx.Add(&knftables.Chain{Name: c.name})
	}
	for _, c := range chains {
		for _, r := range c.rules {
			tx.Add(&knftables.Rule{Chain: c.name, Rule: r.text()})
		}
	}
	tx.Add(&knftables.Element{Map: serviceIPsMap, Key: s.mapKey(), Value: []string{"goto " + s.svcChain()}})
}

func (k *knft) load(sh shape, svcs []service) error {
	return k.nft.Run(context.Background(), k.loadTx(sh, svcs))
}

// update is what partialSync sends for one changed Service port: its chains
// flushed, its element deleted, then both written anew.
func (k *knft) update(sh shape, s service, gen int) error {
	tx := k.nft.NewTransaction()
	for _, c := range s.chains(sh, gen) {
		tx.Flush(&knftables.Chain{Name: c.name})
	}
	tx.Delete(&knftables.Element{Map: serviceIPsMap, Key: s.mapKey()})
	k.addService(tx, sh, s, gen)
	return k.nft.Run(context.Background(), tx)
}

func (k *knft) drop() error {
	tx := k.nft.NewTransaction()
	tx.Add(&knftables.Table{}) // nft 1.0.6 has no "destroy": add, then delete
	tx.Delete(&knftables.Table{})
	return k.nft.Run(context.Background(), tx)
}

// loadRSS feeds the same transaction text to `nft -f -` itself, the way
// knftables' Run does, to read the nft process's peak RSS.
func (k *knft) loadRSS(sh shape, svcs []service) (float64, error) {
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(k.loadTx(sh, svcs).String())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("nft -f -: %w: %s", err, stderr.String())
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0, nil
	}
	return float64(ru.Maxrss) / 1024, nil // kB on Linux
}
