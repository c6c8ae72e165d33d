package ipam

import (
	"net/netip"
	"strings"
	"testing"
)

func TestRangeCanonicalize(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		in                   Range
		start, end, gw, fail string
	}{
		{name: "defaults v4", in: rng("10.0.0.0/24"), start: "10.0.0.1", end: "10.0.0.254", gw: "10.0.0.1"},
		{name: "host bits masked", in: rng("10.0.0.7/24"), start: "10.0.0.1", end: "10.0.0.254", gw: "10.0.0.1"},
		{name: "defaults v6", in: rng("fd00::/120"), start: "fd00::1", end: "fd00::ff", gw: "fd00::1"},
		{name: "/31 too small", in: rng("10.0.0.0/31"), fail: "no usable"},
		{name: "gateway outside", in: Range{Subnet: netip.MustParsePrefix("10.0.0.0/24"), Gateway: netip.MustParseAddr("10.0.1.1")}, fail: "outside subnet"},
		{name: "start after end", in: Range{Subnet: netip.MustParsePrefix("10.0.0.0/24"), Start: netip.MustParseAddr("10.0.0.9"), End: netip.MustParseAddr("10.0.0.3")}, fail: "after rangeEnd"},
		{name: "broadcast in range", in: Range{Subnet: netip.MustParsePrefix("10.0.0.0/24"), End: netip.MustParseAddr("10.0.0.255")}, fail: "broadcast"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.in
			err := r.Canonicalize()
			if tc.fail != "" {
				if err == nil || !strings.Contains(err.Error(), tc.fail) {
					t.Fatalf("got %v, want error containing %q", err, tc.fail)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Start.String() != tc.start || r.End.String() != tc.end || r.Gateway.String() != tc.gw {
				t.Fatalf("got %s-%s gw %s", r.Start, r.End, r.Gateway)
			}
		})
	}
}

func TestCanonicalizeRejectsOverlapAndMixedFamilies(t *testing.T) {
	if err := Canonicalize([]RangeSet{{rng("10.0.0.0/24")}, {rng("10.0.0.0/25")}}); err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Fatalf("overlap: %v", err)
	}
	if err := Canonicalize([]RangeSet{{rng("10.0.0.0/24"), rng("fd00::/64")}}); err == nil || !strings.Contains(err.Error(), "mixes") {
		t.Fatalf("mixed: %v", err)
	}
	if err := Canonicalize([]RangeSet{{rng("10.0.0.0/24"), rng("10.0.1.0/24")}, {rng("fd00::/64")}}); err != nil {
		t.Fatalf("valid dual-stack with two v4 ranges: %v", err)
	}
}
