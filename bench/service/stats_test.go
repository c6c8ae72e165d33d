package main

import "testing"

func TestMedianCI(t *testing.T) {
	for _, tc := range []struct {
		n, k int // the interval is the k-th smallest and k-th largest
	}{
		{5, 0}, // too few pairs: no interval
		{6, 1},
		{24, 7},
		{48, 17},
		{100, 40},
	} {
		xs := make([]float64, tc.n)
		for i := range xs {
			xs[i] = float64(tc.n - i) // reversed: medianCI sorts
		}
		lo, hi := medianCI(xs)
		wantLo, wantHi := float64(tc.k), float64(tc.n+1-tc.k)
		if tc.k == 0 {
			wantLo, wantHi = 0, 0
		}
		if lo != wantLo || hi != wantHi {
			t.Errorf("n=%d: interval %v-%v, want %v-%v", tc.n, lo, hi, wantLo, wantHi)
		}
	}
}

func TestCounterParsing(t *testing.T) {
	out := kernelCounters{}
	addSNMP(out, "Tcp: RtoAlgorithm AttemptFails OutRsts\nTcp: 1 7 9\nUdp: InDatagrams\nUdp: 3\n")
	addSNMP(out, "TcpExt: TCPTimeouts TW\nTcpExt: 4 100\n")
	addConntrackStat(out, "entries  found insert_failed drop\n00000041 0000000a 00000001 00000000\n00000041 00000005 00000002 00000001\n")
	want := kernelCounters{"TcpAttemptFails": 7, "TcpOutRsts": 9, "TcpExtTCPTimeouts": 4,
		"ct_found": 15, "ct_insert_failed": 3, "ct_drop": 1}
	for k, v := range want {
		if out[k] != v {
			t.Errorf("%s = %v, want %v", k, out[k], v)
		}
	}
	if len(out) != len(want) {
		t.Errorf("counters %v, want only %v", out, want)
	}
}
