package policy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func r(s string) AddrRange {
	if p, err := netip.ParsePrefix(s); err == nil {
		return rangeOf(p)
	}
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		b = a
	}
	return AddrRange{netip.MustParseAddr(a), netip.MustParseAddr(b)}
}

func strs(s addrSet) []string {
	var out []string
	for _, x := range s {
		out = append(out, x.String())
	}
	return out
}

func TestAddrRanges(t *testing.T) {
	for _, c := range []struct {
		name string
		got  addrSet
		want []string
	}{
		{"merge adjacent and overlapping", union(r("10.0.0.4"), r("10.0.0.0/30"), r("10.0.0.6-10.0.0.9"), r("10.0.0.5")),
			[]string{"10.0.0.0-10.0.0.9"}},
		{"keep apart", union(r("10.0.0.9"), r("10.0.0.1")), []string{"10.0.0.1", "10.0.0.9"}},
		{"the last address", union(r("255.255.255.255"), r("255.255.255.0/24"), r("0.0.0.0")), []string{"0.0.0.0", "255.255.255.0/24"}},
		{"except in the middle", addrSet{r("10.244.0.0/16")}.minus(r("10.244.1.0/24")),
			[]string{"10.244.0.0/24", "10.244.2.0-10.244.255.255"}},
		{"except at the start and the end", addrSet{r("10.0.0.0/24")}.minus(r("10.0.0.0/25")).minus(r("10.0.0.255")),
			[]string{"10.0.0.128-10.0.0.254"}},
		{"except all", addrSet{r("10.0.0.0/24")}.minus(r("10.0.0.0/8")), nil},
		{"except elsewhere", addrSet{r("10.0.0.0/24")}.minus(r("10.1.0.0/16")), []string{"10.0.0.0/24"}},
		{"everything", addrSet{everything(netip.IPv6Unspecified())}, []string{"::/0"}},
		{"IPv6 except", addrSet{r("fd00::/64")}.minus(r("fd00::5")), []string{"fd00::-fd00::4", "fd00::6-fd00::ffff:ffff:ffff:ffff"}},
	} {
		if got := strs(c.got); !slices.Equal(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

// Overlapping grants become port ranges that do not overlap, each with
// the union of the peers of the grants that cover it, neighbours with the
// same peers merged.
func TestDisjoint(t *testing.T) {
	a, b := r("10.0.0.1"), r("10.0.0.2")
	got := disjoint([]portGrant{
		{PortRange{80, 90}, []AddrRange{a}},
		{PortRange{85, 85}, []AddrRange{b}},
		{PortRange{91, 100}, []AddrRange{a}},
		{PortRange{0, 65535}, []AddrRange{r("10.0.0.9")}},
	})
	var lines []string
	for _, pp := range got {
		lines = append(lines, pp.Ports.String()+" "+strings.Join(strs(pp.Peers), ","))
	}
	want := []string{"0-79 10.0.0.9", "80-84 10.0.0.1,10.0.0.9", "85 10.0.0.1-10.0.0.2,10.0.0.9", "86-100 10.0.0.1,10.0.0.9", "101-65535 10.0.0.9"}
	if !slices.Equal(lines, want) {
		t.Errorf("disjoint:\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}
