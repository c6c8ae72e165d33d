package policy_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/knftables"
)

// The tracer: a packet through the forward hook of one node's policy
// table as an engine wrote it into an nft.Fake, read from the rules' text
// and the sets' elements (kube-proxy's packet-flow tests are the model).
// It knows the nft statements the table may use and fails on any other,
// so a rule it cannot read is a test failure, not a pass.

// tracePacket is a packet as the forward hook sees it.
type tracePacket struct {
	packet
	ctState  string // "new", "established", ...
	icmpType string // for ICMPv6: "nd-neighbor-solicit", ...
}

// trace reports whether table lets p through its forward base chains.
func trace(table *knftables.FakeTable, p tracePacket) (bool, error) {
	for _, c := range table.Chains {
		if c.Hook == nil || *c.Hook != knftables.ForwardHook {
			continue
		}
		v, err := runChain(table, c.Name, p, 0)
		if err != nil || v == "drop" {
			return false, err
		}
	}
	return true, nil
}

// runChain returns "accept", "drop", or "" (the end of the chain or a
// return).
func runChain(table *knftables.FakeTable, chain string, p tracePacket, depth int) (string, error) {
	c, ok := table.Chains[chain]
	if !ok || depth > 8 {
		return "", fmt.Errorf("chain %q missing or jumped to too deep", chain)
	}
	for _, r := range c.Rules {
		v, err := runRule(table, strings.Fields(r.Rule), p, depth)
		if err != nil {
			return "", fmt.Errorf("%s: %q: %w", chain, r.Rule, err)
		}
		switch v {
		case "accept", "drop":
			return v, nil
		case "return":
			return "", nil
		}
	}
	return "", nil
}

// runRule evaluates one rule: "" when a match fails or no verdict comes.
func runRule(table *knftables.FakeTable, toks []string, p tracePacket, depth int) (string, error) {
	for i := 0; i < len(toks); {
		switch t := toks[i]; t {
		case "counter":
			if i+1 < len(toks) && toks[i+1] == "name" { // counter name FIELDS map @m: a miss ends the rule
				n, ok, err := lookup(table, toks[i+2:], p)
				if err != nil || !ok {
					return "", err
				}
				i += 2 + n
				continue
			}
			i++
		case "limit": // limit rate N/second: the tracer is never over it
			i += 3
		case "log": // log prefix "P" group N
			i += 5
		case "accept", "drop", "return":
			return t, nil
		case "jump":
			v, err := runChain(table, toks[i+1], p, depth+1)
			if err != nil || v != "" {
				return v, err
			}
			i += 2
		case "ct":
			if toks[i+1] != "state" || !slices.Contains(strings.Split(toks[i+2], ","), p.ctState) {
				return "", nil
			}
			i += 3
		case "icmpv6":
			if p.proto != "ICMPv6" || toks[i+1] != "type" || toks[i+2] != p.icmpType {
				return "", nil
			}
			i += 3
		case "meta":
			if toks[i+1] != "l4proto" {
				return "", fmt.Errorf("meta %s", toks[i+1])
			}
			if !strings.EqualFold(toks[i+2], string(p.proto)) {
				return "", nil
			}
			i += 3
		default:
			n, ok, err := lookup(table, toks[i:], p)
			if err != nil || !ok {
				return "", err
			}
			i += n
		}
	}
	return "", nil
}

// lookup evaluates "SEL [. SEL ...] @set" and returns the tokens it used.
func lookup(table *knftables.FakeTable, toks []string, p tracePacket) (int, bool, error) {
	var fields []string
	i := 0
	for {
		if i+1 >= len(toks) {
			return 0, false, fmt.Errorf("unreadable %q", toks)
		}
		v, err := field(toks[i], toks[i+1], p)
		if err != nil {
			return 0, false, err
		}
		fields = append(fields, v)
		i += 2
		if toks[i] != "." {
			break
		}
		i++
	}
	if toks[i] == "map" { // a map of counters: a lookup all the same
		i++
	}
	if !strings.HasPrefix(toks[i], "@") {
		return 0, false, fmt.Errorf("expected a set at %q", toks[i])
	}
	var elements []*knftables.Element
	interval := false
	if set, ok := table.Sets[toks[i][1:]]; ok {
		elements, interval = set.Elements, slices.Contains(set.Flags, knftables.IntervalFlag)
	} else if m, ok := table.Maps[toks[i][1:]]; ok {
		elements = m.Elements
	} else {
		return 0, false, fmt.Errorf("no set %s", toks[i])
	}
	for _, e := range elements {
		if elementMatches(e.Key, fields, interval) {
			return i + 1, true, nil
		}
	}
	return i + 1, false, nil
}

func field(a, b string, p tracePacket) (string, error) {
	switch a + " " + b {
	case "ip saddr", "ip6 saddr":
		return p.src.String(), nil
	case "ip daddr", "ip6 daddr":
		return p.dst.String(), nil
	case "th dport":
		if p.port == 0 {
			return "", fmt.Errorf("th dport of a packet without ports (%s)", p.proto)
		}
		return strconv.Itoa(p.port), nil
	}
	return "", fmt.Errorf("unknown field %s %s", a, b)
}

// elementMatches compares a packet's fields with an element: in an
// interval set each field of the element is a value, a prefix or a range.
func elementMatches(key, fields []string, interval bool) bool {
	if len(key) != len(fields) {
		return false
	}
	for i, k := range key {
		if !interval {
			if k != fields[i] {
				return false
			}
			continue
		}
		if !inField(k, fields[i]) {
			return false
		}
	}
	return true
}

// fieldRange is one field of an interval set's element: a range of
// addresses or of ports.
type fieldRange struct {
	addrs       bool
	first, last netip.Addr
	lo, hi      int
}

var fieldCache = map[string]fieldRange{}

func parseField(k string) fieldRange {
	if f, ok := fieldCache[k]; ok {
		return f
	}
	var f fieldRange
	lo, hi, isRange := strings.Cut(k, "-")
	if !isRange {
		hi = lo
	}
	if pfx, err := netip.ParsePrefix(k); err == nil {
		f = fieldRange{addrs: true, first: pfx.Masked().Addr(), last: lastOf(pfx)}
	} else if a, err := netip.ParseAddr(lo); err == nil {
		f = fieldRange{addrs: true, first: a, last: netip.MustParseAddr(hi)}
	} else {
		f.lo, _ = strconv.Atoi(lo)
		f.hi, _ = strconv.Atoi(hi)
	}
	fieldCache[k] = f
	return f
}

func lastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func inField(k, v string) bool {
	f := parseField(k)
	if f.addrs {
		a, err := netip.ParseAddr(v)
		return err == nil && a.Is4() == f.first.Is4() && f.first.Compare(a) <= 0 && a.Compare(f.last) <= 0
	}
	n, err := strconv.Atoi(v)
	return err == nil && f.lo <= n && n <= f.hi
}
