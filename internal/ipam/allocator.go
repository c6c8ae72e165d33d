package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Config is what the allocator needs from the network configuration.
type Config struct {
	Network  string // CNI network name: one store per network
	DataDir  string
	Sets     []RangeSet // canonicalized (see Canonicalize)
	Reserved []netip.Addr
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
	s, err := OpenStore(cfg.DataDir, cfg.Network)
	if err != nil {
		return nil, err
	}
	return &Allocator{cfg: cfg, store: s}, nil
}

// Store exposes the underlying store (for tests and diagnostics).
func (a *Allocator) Store() *Store { return a.store }

// Close releases the store.
func (a *Allocator) Close() error { return a.store.Close() }

// locked runs fn under the store lock.
func (a *Allocator) locked(fn func() error) error {
	if err := a.store.Lock(); err != nil {
		return err
	}
	defer func() { _ = a.store.Unlock() }()
	return fn()
}

// Allocate gives owner o one address from every range set. It is idempotent:
// an owner that already holds (or was about to claim, before a crash) an
// address in a set gets that same address again. requested lists addresses
// the runtime asked for (the "ips" capability); each must lie in one set.
// On error nothing newly claimed by this call is left behind.
func (a *Allocator) Allocate(o Owner, requested []netip.Addr) ([]Allocation, error) {
	var out []Allocation
	err := a.locked(func() error {
		want := make(map[int]netip.Addr)
		for _, r := range requested {
			set := a.setOf(r)
			if set < 0 {
				return &ConflictError{Addr: r, Reason: "is in no configured range"}
			}
			if _, dup := want[set]; dup {
				return &ConflictError{Addr: r, Reason: "is a second address for one range set"}
			}
			want[set] = r
		}
		var fresh []netip.Addr
		for set := range a.cfg.Sets {
			alloc, isNew, err := a.allocateInSet(o, set, want[set])
			if err != nil {
				for _, addr := range fresh {
					_ = a.store.Unclaim(addr)
				}
				return err
			}
			if isNew {
				fresh = append(fresh, alloc.Addr)
			}
			out = append(out, alloc)
		}
		return nil
	})
	return out, err
}

func (a *Allocator) allocateInSet(o Owner, set int, requested netip.Addr) (Allocation, bool, error) {
	prev, ok, err := a.store.Index(o, set)
	if err != nil {
		return Allocation{}, false, err
	}
	if ok && (!requested.IsValid() || requested == prev) {
		holder, held, err := a.store.Holder(prev)
		if err != nil {
			return Allocation{}, false, err
		}
		switch {
		case held && holder == o:
			return a.allocation(set, prev), false, nil
		case !held && a.allocatable(set, prev):
			// The index was written but the claim was not (crash in between).
			if claimed, err := a.store.Claim(prev, o); err != nil || claimed {
				return a.allocation(set, prev), claimed, err
			}
		}
		// Stale entry (address now held by someone else): allocate afresh.
	}
	candidate := requested
	if candidate.IsValid() {
		if !a.allocatable(set, candidate) {
			return Allocation{}, false, &ConflictError{Addr: candidate, Reason: "is reserved (gateway, network, broadcast or configured reserved address)"}
		}
		if holder, held, err := a.store.Holder(candidate); err != nil {
			return Allocation{}, false, err
		} else if held && holder != o {
			return Allocation{}, false, &ConflictError{Addr: candidate, Reason: "is already allocated to " + holder.String()}
		}
	} else {
		candidate, err = a.nextFree(set)
		if err != nil {
			return Allocation{}, false, err
		}
	}
	// Index first, then claim: see the package doc.
	if err := a.store.SetIndex(o, set, candidate); err != nil {
		return Allocation{}, false, err
	}
	claimed, err := a.store.Claim(candidate, o)
	if err != nil {
		return Allocation{}, false, err
	}
	if !requested.IsValid() {
		if err := a.store.SetLastReserved(set, candidate); err != nil {
			return Allocation{}, false, err
		}
	}
	return a.allocation(set, candidate), claimed, nil
}

// nextFree walks the set round-robin from the address after the cursor.
func (a *Allocator) nextFree(set int) (netip.Addr, error) {
	rs := a.cfg.Sets[set]
	ri, cur := 0, rs[0].Start.Prev()
	if last, ok, err := a.store.LastReserved(set); err != nil {
		return netip.Addr{}, err
	} else if ok {
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
		if !a.allocatable(set, cur) {
			continue
		}
		_, held, err := a.store.Holder(cur)
		if err != nil {
			return netip.Addr{}, err
		}
		if !held {
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
	for _, r := range a.cfg.Reserved {
		if r == addr {
			return false
		}
	}
	return in
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
	err := a.locked(func() error {
		for set := range a.cfg.Sets {
			addr, ok, err := a.store.Index(o, set)
			if err != nil || !ok {
				return err
			}
			if holder, held, err := a.store.Holder(addr); err != nil {
				return err
			} else if held && holder == o {
				out = append(out, a.allocation(set, addr))
			}
		}
		return nil
	})
	return out, err
}

// Release frees everything owner o holds; releasing nothing is not an error.
func (a *Allocator) Release(o Owner) error {
	return a.locked(func() error {
		for set := range a.cfg.Sets {
			if err := a.releaseSet(o, set); err != nil {
				return err
			}
		}
		return nil
	})
}

func (a *Allocator) releaseSet(o Owner, set int) error {
	addr, ok, err := a.store.Index(o, set)
	if err != nil {
		return err
	}
	if ok {
		if holder, held, err := a.store.Holder(addr); err != nil {
			return err
		} else if held && holder == o {
			if err := a.store.Unclaim(addr); err != nil {
				return err
			}
		}
	}
	return a.store.DropIndex(o, set)
}

// GC releases every claim and index entry whose owner valid rejects, and
// returns the released claims. It goes on past errors and returns them joined.
func (a *Allocator) GC(valid func(Owner) bool) ([]Record, error) {
	var released []Record
	err := a.locked(func() error {
		var errs []error
		claims, err := a.store.Claims()
		if err != nil {
			return err
		}
		for _, c := range claims {
			if c.Owner != (Owner{}) && valid(c.Owner) {
				continue
			}
			if err := a.store.Unclaim(c.Addr); err != nil {
				errs = append(errs, err)
				continue
			}
			released = append(released, c)
		}
		idx, err := a.store.Indexes()
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		for _, e := range idx {
			if !valid(e.Owner) {
				errs = append(errs, a.store.DropIndex(e.Owner, e.Set))
			}
		}
		return errors.Join(errs...)
	})
	return released, err
}
