package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

func newAllocator(t *testing.T, dir string, sets ...RangeSet) *Allocator {
	t.Helper()
	if err := Canonicalize(sets); err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Network: "testnet", DataDir: dir, Sets: sets})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

func rng(subnet string) Range { return Range{Subnet: netip.MustParsePrefix(subnet)} }

func owner(i int) Owner { return Owner{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"} }

func mustAllocate(t *testing.T, a *Allocator, o Owner) netip.Addr {
	t.Helper()
	got, err := a.Allocate(o, nil)
	if err != nil {
		t.Fatalf("allocate for %s: %v", o, err)
	}
	if len(got) != 1 {
		t.Fatalf("allocate for %s: got %d addresses, want 1", o, len(got))
	}
	return got[0].Addr
}

func TestAllocationOrderSkipsGatewayNetworkAndBroadcast(t *testing.T) {
	a := newAllocator(t, t.TempDir(), RangeSet{rng("10.0.0.0/29")})
	var got []string
	for i := range 5 {
		got = append(got, mustAllocate(t, a, owner(i)).String())
	}
	// .0 network, .1 gateway, .7 broadcast are never handed out.
	want := "10.0.0.2 10.0.0.3 10.0.0.4 10.0.0.5 10.0.0.6"
	if strings.Join(got, " ") != want {
		t.Fatalf("allocation order = %v, want %s", got, want)
	}
	_, err := a.Allocate(owner(99), nil)
	var ex *ExhaustedError
	if !errors.As(err, &ex) || !strings.Contains(err.Error(), "10.0.0.0/29") {
		t.Fatalf("exhausted range: got %v, want an ExhaustedError naming 10.0.0.0/29", err)
	}
}

func TestReservedAndExplicitRange(t *testing.T) {
	r := Range{Subnet: netip.MustParsePrefix("10.1.0.0/24"), Start: netip.MustParseAddr("10.1.0.10"),
		End: netip.MustParseAddr("10.1.0.12"), Gateway: netip.MustParseAddr("10.1.0.254")}
	sets := []RangeSet{{r}}
	if err := Canonicalize(sets); err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Network: "n", DataDir: t.TempDir(), Sets: sets, Reserved: []netip.Addr{netip.MustParseAddr("10.1.0.11")}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if got := mustAllocate(t, a, owner(1)); got.String() != "10.1.0.10" {
		t.Fatalf("first = %s, want 10.1.0.10", got)
	}
	if got := mustAllocate(t, a, owner(2)); got.String() != "10.1.0.12" {
		t.Fatalf("second = %s, want 10.1.0.12 (10.1.0.11 is reserved)", got)
	}
	if _, err := a.Allocate(owner(3), nil); err == nil {
		t.Fatal("third allocation succeeded in a range of three with one reserved")
	}
}

func TestReuseAfterReleaseIsRoundRobin(t *testing.T) {
	a := newAllocator(t, t.TempDir(), RangeSet{rng("10.0.0.0/29")})
	first := mustAllocate(t, a, owner(1))
	mustAllocate(t, a, owner(2))
	if err := a.Release(owner(1)); err != nil {
		t.Fatal(err)
	}
	// The released address is not reused at once ...
	if got := mustAllocate(t, a, owner(3)); got == first {
		t.Fatalf("released %s handed out again immediately", first)
	}
	for i := 4; i <= 5; i++ { // .5 and .6: the end of the range
		mustAllocate(t, a, owner(i))
	}
	// ... but once the cursor wraps around it is.
	if got := mustAllocate(t, a, owner(6)); got != first {
		t.Fatalf("after wrapping got %s, want the released %s", got, first)
	}
	if _, err := a.Allocate(owner(7), nil); err == nil {
		t.Fatal("allocation from a full range succeeded")
	}
}

func TestAllocateIsIdempotentPerOwner(t *testing.T) {
	a := newAllocator(t, t.TempDir(), RangeSet{rng("10.0.0.0/24")}, RangeSet{rng("fd00:1::/120")})
	first, err := a.Allocate(owner(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := a.Allocate(owner(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != 2 || fmt.Sprint(first) != fmt.Sprint(again) {
		t.Fatalf("repeated allocate: %v then %v", first, again)
	}
	if !first[1].Addr.Is6() || first[1].Gateway.String() != "fd00:1::1" {
		t.Fatalf("IPv6 allocation = %+v", first[1])
	}
	if st, _ := a.Snapshot(); len(st.Claims) != 2 {
		t.Fatalf("%d claims after repeated allocate, want 2", len(st.Claims))
	}
}

func TestRequestedAddress(t *testing.T) {
	a := newAllocator(t, t.TempDir(), RangeSet{rng("10.0.0.0/24")})
	want := netip.MustParseAddr("10.0.0.77")
	got, err := a.Allocate(owner(1), []netip.Addr{want})
	if err != nil || got[0].Addr != want {
		t.Fatalf("requested %s: got %v, %v", want, got, err)
	}
	var conflict *ConflictError
	if _, err := a.Allocate(owner(2), []netip.Addr{want}); !errors.As(err, &conflict) {
		t.Fatalf("second owner requesting %s: %v, want a conflict", want, err)
	}
	for _, bad := range []string{"10.0.0.1", "10.0.0.255", "10.9.0.5"} {
		if _, err := a.Allocate(owner(3), []netip.Addr{netip.MustParseAddr(bad)}); !errors.As(err, &conflict) {
			t.Fatalf("requesting %s: %v, want a conflict", bad, err)
		}
	}
}

// A plugin killed after allocating but before the interface was made and
// before the runtime cached a result: GC (the runtime does not know the
// container) or a re-ADD followed by DEL leaves nothing.
func TestCrashAfterAllocationRecoveredByGCAndReAdd(t *testing.T) {
	a := newAllocator(t, t.TempDir(), RangeSet{rng("10.0.0.0/24")})
	live, crashed, retried := owner(1), owner(2), owner(3)
	liveAddr := mustAllocate(t, a, live)
	crashedAddr := mustAllocate(t, a, crashed)
	retriedAddr := mustAllocate(t, a, retried)

	released, err := a.GC(func(o Owner) bool { return o == live || o == retried })
	if err != nil {
		t.Fatal(err)
	}
	if len(released) != 1 || released[crashedAddr].Owner != crashed {
		t.Fatalf("GC released %v, want only %s", released, crashed)
	}
	if got := mustAllocate(t, a, retried); got != retriedAddr {
		t.Fatalf("re-ADD got %s, want %s", got, retriedAddr)
	}
	if got, _ := a.Lookup(live); len(got) != 1 || got[0].Addr != liveAddr {
		t.Fatalf("GC touched the valid attachment: %v", got)
	}
	for _, o := range []Owner{live, retried} {
		if err := a.Release(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Release(live); err != nil { // twice is fine
		t.Fatal(err)
	}
	assertEmpty(t, a)
}

func assertEmpty(t *testing.T, a *Allocator) {
	t.Helper()
	st, err := a.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Claims) != 0 {
		t.Fatalf("store not empty: %v", st.Claims)
	}
}

const childEnv = "FLATNET_IPAM_TEST_CHILD"

// TestConcurrentProcesses starts 50 processes that allocate at once from one
// store; flock must keep every address unique.
func TestConcurrentProcesses(t *testing.T) {
	dir := t.TempDir()
	const n = 50
	var wg sync.WaitGroup
	out := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^TestChildAllocate$")
			cmd.Env = append(os.Environ(), childEnv+"="+dir, "FLATNET_IPAM_TEST_ID="+fmt.Sprint(i))
			b, err := cmd.CombinedOutput()
			out[i], errs[i] = string(b), err
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("child %d: %v: %s", i, errs[i], out[i])
		}
		_, after, ok := strings.Cut(out[i], "ALLOCATED=")
		if !ok {
			t.Fatalf("child %d printed no address: %s", i, out[i])
		}
		addr := strings.Fields(after)[0]
		if prev, dup := seen[addr]; dup {
			t.Fatalf("children %d and %d both got %s", prev, i, addr)
		}
		seen[addr] = i
	}
	a := newAllocator(t, dir, RangeSet{rng("10.50.0.0/24")})
	if st, _ := a.Snapshot(); len(st.Claims) != n {
		t.Fatalf("%d claims on disk, want %d", len(st.Claims), n)
	}
}

func TestChildAllocate(t *testing.T) {
	dir := os.Getenv(childEnv)
	if dir == "" {
		t.Skip("helper process for TestConcurrentProcesses")
	}
	limitFileSize(t)
	a := newAllocator(t, dir, RangeSet{rng("10.50.0.0/24")})
	got := mustAllocate(t, a, Owner{ContainerID: "child" + os.Getenv("FLATNET_IPAM_TEST_ID"), IfName: "eth0"})
	fmt.Printf("ALLOCATED=%s\n", got)
}
