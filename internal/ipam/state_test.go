package ipam

import (
	"errors"
	"net/netip"
	"strconv"
	"testing"
)

// Whatever Allocate accepts must load back unchanged: an owner the on-disk
// form cannot carry is refused before anything is written.
func TestOwnersThatCannotBeReadBackAreRefused(t *testing.T) {
	a := newAllocator(t, t.TempDir(), RangeSet{rng("10.0.0.0/24")})
	kept := mustAllocate(t, a, owner(1))
	for _, o := range []Owner{
		{ContainerID: "with space", IfName: "eth0"},
		{ContainerID: "with\nnewline", IfName: "eth0"},
		{ContainerID: "with:colon", IfName: "eth0"},
		{ContainerID: "tab\there", IfName: "eth0"},
		{ContainerID: "nbsp\u00a0here", IfName: "eth0"},
		{ContainerID: "nul\x00here", IfName: "eth0"},
		{ContainerID: "bad-utf8-\xff", IfName: "eth0"},
		{ContainerID: "", IfName: "eth0"},
		{ContainerID: "c", IfName: ""},
		{ContainerID: "c", IfName: "eth 0"},
		{ContainerID: "c", IfName: "eth:0"},
	} {
		t.Run(strconv.Quote(o.String()), func(t *testing.T) {
			var invalid *InvalidOwnerError
			if got, err := a.Allocate(o, nil); !errors.As(err, &invalid) {
				t.Fatalf("allocate for owner %q: %v, %v; want an InvalidOwnerError", o, got, err)
			}
			// The store itself refuses too, whoever builds the state.
			if err := saveWith(a.Store(), func(st *State) { st.Claims[netip.MustParseAddr("10.0.0.99")] = Claim{Owner: o} }); err == nil {
				t.Fatalf("store saved a claim for owner %q", o)
			}
			st, err := a.Snapshot()
			if err != nil {
				t.Fatalf("store unreadable after refusing %q: %v", o, err)
			}
			if len(st.Claims) != 1 || st.Claims[kept].Owner != owner(1) {
				t.Fatalf("claims after refusing %q: %v, want only %s for %s", o, st.Claims, kept, owner(1))
			}
		})
	}
}

// saveWith loads the state, changes it with fn and saves it, under the lock.
func saveWith(s *Store, fn func(st *State)) error {
	if err := s.Lock(); err != nil {
		return err
	}
	defer func() { _ = s.Unlock() }()
	st, err := s.Load()
	if err != nil {
		return err
	}
	fn(st)
	return s.Save(st)
}
