package proxy

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// verify checks, cheaply, that the table still holds what the proxy
// programmed: every chain, set and map by name (and nothing of its own it
// did not make), and the rule count of each fixed chain (the entry points
// of every packet). It returns what it found missing or extra, "" when the
// table is intact. Element contents are not read: at 10,000 Services that
// is a large dump, and the hourly full sync rewrites them anyway.
//
// Over netlink (nft.New) a check costs three name dumps and a rule
// dump per fixed chain: it runs every CheckInterval when nothing changed.
func (p *Proxier) verify(ctx context.Context) (string, error) {
	if p.expected == nil {
		p.expected = p.expectedObjects()
	}
	want := p.expected
	var damage []string
	existing, err := p.listObjects(ctx)
	if err != nil {
		return "", err
	}
	for _, kind := range []string{"chains", "sets", "maps"} {
		missing, extra := diffNames(want[kind], existing[kind])
		if len(missing) > 0 {
			damage = append(damage, fmt.Sprintf("%s missing: %s", kind, strings.Join(missing, " ")))
		}
		if len(extra) > 0 {
			damage = append(damage, fmt.Sprintf("%s not made by this proxy: %s", kind, strings.Join(extra, " ")))
		}
	}
	if len(damage) > 0 {
		return strings.Join(damage, "; "), nil
	}
	for _, chain := range slices.Sorted(maps.Keys(p.baseRules)) {
		rules, err := p.nft.ListRules(ctx, chain)
		if err != nil && !nft.IsNotFound(err) {
			return "", fmt.Errorf("list rules of %s: %w", chain, err)
		}
		if len(rules) != p.baseRules[chain] {
			damage = append(damage, fmt.Sprintf("chain %s has %d rules, want %d", chain, len(rules), p.baseRules[chain]))
		}
	}
	return strings.Join(damage, "; "), nil
}

// expectedObjects lists by kind the names of what the proxy programmed.
func (p *Proxier) expectedObjects() map[string]map[string]bool {
	want := map[string]map[string]bool{"chains": {}, "sets": {}, "maps": {}}
	for c := range p.baseRules {
		want["chains"][c] = true
	}
	for name, o := range p.shared {
		if o.tier == tierMap {
			want["maps"][name] = true
		} else {
			want["chains"][name] = true
		}
	}
	for _, o := range p.programmed {
		for _, c := range o.chains {
			want["chains"][c] = true
		}
		for _, s := range o.sets {
			want["sets"][s] = true
		}
	}
	for name := range fixedSets {
		kind := "sets"
		if name != clusterIPsSet && name != hairpinSet {
			kind = "maps"
		}
		want[kind][name] = true
	}
	return want
}

func diffNames(want map[string]bool, have []string) (missing, extra []string) {
	seen := map[string]bool{}
	for _, h := range have {
		seen[h] = true
		if !want[h] {
			extra = append(extra, h)
		}
	}
	for w := range want {
		if !seen[w] {
			missing = append(missing, w)
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	return missing, extra
}
