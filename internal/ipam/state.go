package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Owner identifies an attachment: the runtime's (containerID, ifname) pair,
// the same key CNI GC uses for its valid-attachments list.
type Owner struct {
	ContainerID string
	IfName      string
}

func (o Owner) String() string { return o.ContainerID + ":" + o.IfName }

// InvalidOwnerError says that an owner cannot be stored: the on-disk form
// could not carry it back unchanged.
type InvalidOwnerError struct {
	Owner  Owner
	Reason string
}

func (e *InvalidOwnerError) Error() string {
	return fmt.Sprintf("owner %q cannot be stored: %s", e.Owner.String(), e.Reason)
}

// Validate accepts exactly the owners the store can write and read back:
// both fields non-empty UTF-8 without whitespace, control characters or ':'
// (a record is space-separated words, the owner word is "containerID:ifname").
// The CNI spec's container IDs and Linux interface names all pass.
func (o Owner) Validate() error {
	for _, f := range []struct{ name, value string }{{"containerID", o.ContainerID}, {"ifname", o.IfName}} {
		if reason := fieldProblem(f.value); reason != "" {
			return &InvalidOwnerError{Owner: o, Reason: f.name + " " + reason}
		}
	}
	return nil
}

func fieldProblem(s string) string {
	switch {
	case s == "":
		return "is empty"
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	case strings.ContainsRune(s, ':'):
		return "contains ':'"
	case strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return "contains whitespace or a control character"
	}
	return ""
}

// parseOwner reads the form written by Owner.String, under the same rules
// as Validate.
func parseOwner(s string) (Owner, error) {
	cid, ifname, _ := strings.Cut(s, ":")
	o := Owner{ContainerID: cid, IfName: ifname}
	return o, o.Validate()
}

// Claim is one allocated address.
type Claim struct {
	Owner Owner
	Set   int // index of the range set it came from
}

// State is the whole allocation state of one network.
type State struct {
	Generation uint64
	Claims     map[netip.Addr]Claim
	Cursors    map[int]netip.Addr // round-robin cursor per range set
}

func newState() *State {
	return &State{Claims: map[netip.Addr]Claim{}, Cursors: map[int]netip.Addr{}}
}

// Held returns the address owner o holds in range set set.
func (st *State) Held(o Owner, set int) (netip.Addr, bool) {
	for a, c := range st.Claims {
		if c.Owner == o && c.Set == set {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// check is run before a state is written and after it is read: valid owners
// and addresses, and at most one address per owner and range set.
func (st *State) check() error {
	type key struct {
		o   Owner
		set int
	}
	seen := map[key]netip.Addr{}
	for a, c := range st.Claims {
		if !a.IsValid() || c.Set < 0 {
			return fmt.Errorf("claim of %q for %s in range set %d is not storable", a, c.Owner, c.Set)
		}
		if err := c.Owner.Validate(); err != nil {
			return err
		}
		k := key{c.Owner, c.Set}
		if prev, dup := seen[k]; dup {
			return fmt.Errorf("%s holds both %s and %s in range set %d", c.Owner, prev, a, c.Set)
		}
		seen[k] = a
	}
	for set, a := range st.Cursors {
		if !a.IsValid() || set < 0 {
			return errors.New("invalid round-robin cursor")
		}
	}
	return nil
}
