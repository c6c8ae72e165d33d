package nft

import (
	"strings"
	"testing"

	"sigs.k8s.io/knftables"
)

// Rules outside the language the engines speak are refused with the
// token, never compiled to something else.
func TestCompileRefusesWhatItDoesNotKnow(t *testing.T) {
	id := func() uint32 { return 1 }
	for _, r := range []string{
		"ip saddr 10.0.0.0/8 log prefix x",
		"ip6 saddr ::1 drop",
		"tcp dport 80 drop",
		"ct state bogus drop",
		"numgen random mod 0 == 0 drop",
		"dnat to 10.0.0.1",
		"jump",
		"ip daddr . meta l4proto 10.0.0.1",
	} {
		if _, err := compileRule(IPv4, r, id); err == nil || !strings.Contains(err.Error(), r) {
			t.Errorf("%q compiled (%v), want an error naming it", r, err)
		}
	}
}

func TestPriorities(t *testing.T) {
	for in, want := range map[string]int32{"dstnat": -100, "srcnat": 100, "filter-10": -10, "filter+5": 5, "-150": -150, "raw": -300} {
		if got, err := priority(knftablesPriority(in)); err != nil || got != want {
			t.Errorf("priority %q = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := priority(knftablesPriority("nonsense")); err == nil {
		t.Error("priority nonsense accepted")
	}
}

func knftablesPriority(s string) knftables.BaseChainPriority { return knftables.BaseChainPriority(s) }

// Interval sets are concatenations here (the kernel's pipapo set, whose
// elements carry an end key); one field's intervals, which nft sends as
// pairs of elements, are refused, and so is a prefix with host bits.
func TestIntervals(t *testing.T) {
	var a attrs
	if err := a.set("s", 1, "ipv4_addr", []knftables.SetFlag{knftables.IntervalFlag}, nil, nil, nil); err == nil {
		t.Error("an interval set of one field was encoded")
	}
	start, end, err := encodeRanges([]string{"ipv4_addr", "ipv4_addr", "inet_service"}, []string{"10.0.0.1", "10.1.0.0/16", "80-90"})
	if err != nil {
		t.Fatal(err)
	}
	wantStart := []byte{10, 0, 0, 1, 10, 1, 0, 0, 0, 80, 0, 0}
	wantEnd := []byte{10, 0, 0, 1, 10, 1, 255, 255, 0, 90, 0, 0}
	if string(start) != string(wantStart) || string(end) != string(wantEnd) {
		t.Errorf("range key %v - %v, want %v - %v", start, end, wantStart, wantEnd)
	}
	if _, _, err := encodeRanges([]string{"ipv4_addr", "ipv4_addr"}, []string{"10.0.0.1", "10.1.0.1/16"}); err == nil {
		t.Error("a prefix with host bits was encoded")
	}
}
