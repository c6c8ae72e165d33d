package ipam

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
)

// Config is what the allocator needs from the network configuration.
type Config struct {
	Network  string // CNI network name: one store per network
	DataDir  string
	Sets     []RangeSet // canonicalized (see Canonicalize)
	Reserved []netip.Addr
	Log      *slog.Logger // the store's warnings; nil discards them
}

// Allocation is one address handed to an attachment.
type Allocation struct {
	Set     int // index of the range set it came from
	Addr    netip.Addr
	Subnet  netip.Prefix
	Gateway netip.Addr
}

// Prefix is the address with the subnet's prefix length, as set on an interface.
func (a Allocation) Prefix() netip.Prefix { return netip.PrefixFrom(a.Addr, a.Subnet.Bits()) }

// ExhaustedError says that a range set has no free address left.
type ExhaustedError struct{ Set RangeSet }

func (e *ExhaustedError) Error() string {
	var parts []string
	for i := range e.Set {
		parts = append(parts, e.Set[i].String())
	}
	return "no IP addresses available in range set " + strings.Join(parts, ", ")
}

// ConflictError says that a specifically requested address is held by another
// attachment or lies in no configured range.
type ConflictError struct {
	Addr   netip.Addr
	Reason string
}

func (e *ConflictError) Error() string { return fmt.Sprintf("requested IP %s %s", e.Addr, e.Reason) }

// Allocator hands out addresses from the configured range sets.
type Allocator struct {
	cfg   Config
	store *Store
}

// New opens the store of cfg.Network under cfg.DataDir.
func New(cfg Config) (*Allocator, error) {
	s, err := OpenStore(cfg.DataDir, cfg.Network, cfg.Log)
	if err != nil {
		return nil, err
	}
	return &Allocator{cfg: cfg, store: s}, nil
}

// Store exposes the underlying store (for tests and diagnostics).
func (a *Allocator) Store() *Store { return a.store }

// Close releases the store.
func (a *Allocator) Close() error { return a.store.Close() }

// update runs fn on the current state under the store lock and saves the
// state when fn reports a change: every call is one atomic commit.
func (a *Allocator) update(fn func(st *State) (changed bool, err error)) error {
	if err := a.store.Lock(); err != nil {
		return err
	}
	defer func() { _ = a.store.Unlock() }()
	st, err := a.store.Load()
	if err != nil {
		return err
	}
	changed, err := fn(st)
	if err != nil || !changed {
		return err
	}
	return a.store.Save(st)
}

// Allocate gives owner o one address from every range set. It is idempotent:
// an owner that already holds an address in a set gets that same address
// again. requested lists addresses the runtime asked for (the "ips"
// capability); each must lie in one set. An owner the store cannot carry
// (see Owner.Validate) is an *InvalidOwnerError. On error nothing is changed.
func (a *Allocator) Allocate(o Owner, requested []netip.Addr) ([]Allocation, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	var out []Allocation
	err := a.update(func(st *State) (bool, error) {
		want := make(map[int]netip.Addr)
		for _, r := range requested {
			set := a.setOf(r)
			if set < 0 {
				return false, &ConflictError{Addr: r, Reason: "is in no configured range"}
			}
			if _, dup := want[set]; dup {
				return false, &ConflictError{Addr: r, Reason: "is a second address for one range set"}
			}
			want[set] = r
		}
		changed := false
		for set := range a.cfg.Sets {
			addr, fresh, err := a.allocateInSet(st, o, set, want[set])
			if err != nil {
				return false, err
			}
			changed = changed || fresh
			out = append(out, a.allocation(set, addr))
		}
		return changed, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (a *Allocator) allocateInSet(st *State, o Owner, set int, requested netip.Addr) (netip.Addr, bool, error) {
	if prev, ok := st.Held(o, set); ok {
		if !requested.IsValid() || requested == prev {
			return prev, false, nil
		}
		delete(st.Claims, prev) // the runtime now asks for another address
	}
	if requested.IsValid() {
		if !a.allocatable(set, requested) {
			return netip.Addr{}, false, &ConflictError{Addr: requested, Reason: "is reserved (gateway, network, broadcast or configured reserved address)"}
		}
		if c, held := st.Claims[requested]; held {
			return netip.Addr{}, false, &ConflictError{Addr: requested, Reason: "is already allocated to " + c.Owner.String()}
		}
		st.Claims[requested] = Claim{Owner: o, Set: set}
		return requested, true, nil
	}
	addr, err := a.nextFree(st, set)
	if err != nil {
		return netip.Addr{}, false, err
	}
	st.Claims[addr] = Claim{Owner: o, Set: set}
	st.Cursors[set] = addr
	return addr, true, nil
}

// nextFree walks the set round-robin from the address after the cursor.
func (a *Allocator) nextFree(st *State, set int) (netip.Addr, error) {
	rs := a.cfg.Sets[set]
	ri, cur := 0, rs[0].Start.Prev()
	if last, ok := st.Cursors[set]; ok {
		for i := range rs {
			if rs[i].Contains(last) {
				ri, cur = i, last
			}
		}
	}
	var firstRange int
	var first netip.Addr
	for {
		cur = cur.Next()
		if !cur.IsValid() || !rs[ri].Contains(cur) {
			ri = (ri + 1) % len(rs)
			cur = rs[ri].Start
		}
		if !first.IsValid() {
			firstRange, first = ri, cur
		} else if ri == firstRange && cur == first {
			return netip.Addr{}, &ExhaustedError{Set: rs} // a whole cycle, nothing free
		}
		if _, held := st.Claims[cur]; !held && a.allocatable(set, cur) {
			return cur, nil
		}
	}
}

// allocatable is false for addresses outside the set and for those never
// handed out: gateways and configured reserved addresses.
func (a *Allocator) allocatable(set int, addr netip.Addr) bool {
	in := false
	for i := range a.cfg.Sets[set] {
		r := &a.cfg.Sets[set][i]
		if r.Gateway == addr {
			return false
		}
		in = in || r.Contains(addr)
	}
	return in && !slices.Contains(a.cfg.Reserved, addr)
}

func (a *Allocator) setOf(addr netip.Addr) int {
	for s, rs := range a.cfg.Sets {
		for i := range rs {
			if rs[i].Contains(addr) {
				return s
			}
		}
	}
	return -1
}

func (a *Allocator) allocation(set int, addr netip.Addr) Allocation {
	for _, r := range a.cfg.Sets[set] {
		if r.Subnet.Contains(addr) {
			return Allocation{Set: set, Addr: addr, Subnet: r.Subnet, Gateway: r.Gateway}
		}
	}
	return Allocation{Set: set, Addr: addr}
}

// Lookup returns the addresses owner o holds, without changing anything.
func (a *Allocator) Lookup(o Owner) ([]Allocation, error) {
	var out []Allocation
	err := a.update(func(st *State) (bool, error) {
		for set := range a.cfg.Sets {
			if addr, ok := st.Held(o, set); ok {
				out = append(out, a.allocation(set, addr))
			}
		}
		return false, nil
	})
	return out, err
}

// Release frees everything owner o holds; releasing nothing is not an error.
func (a *Allocator) Release(o Owner) error {
	return a.update(func(st *State) (bool, error) {
		changed := false
		for addr, c := range st.Claims {
			if c.Owner == o {
				delete(st.Claims, addr)
				changed = true
			}
		}
		return changed, nil
	})
}

// GC releases every claim whose owner valid rejects, and returns them.
func (a *Allocator) GC(valid func(Owner) bool) (map[netip.Addr]Claim, error) {
	released := map[netip.Addr]Claim{}
	err := a.update(func(st *State) (bool, error) {
		for addr, c := range st.Claims {
			if !valid(c.Owner) {
				released[addr] = c
				delete(st.Claims, addr)
			}
		}
		return len(released) > 0, nil
	})
	return released, err
}

// Snapshot returns the stored state (for tests and diagnostics).
func (a *Allocator) Snapshot() (*State, error) {
	var out *State
	err := a.update(func(st *State) (bool, error) { out = st; return false, nil })
	return out, err
}
