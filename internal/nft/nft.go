// Package nft is the nftables layer under every table flatnetd owns (the
// service proxy's, egress's, and the policy engine's): transactions of
// typed objects (knftables' Table, Chain, Rule, Set, Map, Element, with a
// verb each), committed to the kernel over netlink in one atomic batch,
// and the listings the engines check the kernel with.
//
//   - Tx records operations in order; Tables.Run commits one Tx as one
//     nfnetlink batch (batch.go, encode.go): the kernel applies all of it
//     or none. Rules are written in nft's syntax and compiled here to the
//     kernel expressions nft would send (compile.go); kernel_test.go
//     holds the two to the same bytes in the kernel for every form the
//     engines write. No nft binary is needed.
//   - A refusal is an *Error naming the errno, the refused operation in
//     nft syntax and, within a run of elements, the refused element (from
//     the kernel's extended ack); IsNotFound and IsAlreadyExists read it
//     and knftables' own errors alike (kernel_test.go provokes both:
//     knftables' Fake accepts a second value for a map key and deleting a
//     missing element, the kernel refuses both).
//   - A set with flags interval must be a concatenation (the kernel's
//     pipapo set): each field of an element's key a value, a prefix or a
//     range ("10.0.0.2 . 10.1.0.0/16 . 80-90"), sent with its end key as
//     nft sends it. The kernel refuses an element that overlaps another
//     one partly (EEXIST), but not one deleted earlier in the transaction.
//   - List, ListRules, ListElements and MapKeys read over netlink
//     (google/nftables); ListElements decodes keys and values by the set's
//     type (address, ifname, port, protocol, integer) with their comments.
//   - Fake is the same interface over knftables' Fake, for unit tests.
//
// Why not nft: `nft -f` parsed and evaluated a 10,000-Service full sync
// (2.4 MB of text) in 0.33 s of user CPU before the kernel saw it, and
// re-read the table before each partial sync; the batch is built here in
// a few milliseconds per thousand elements.
//
// Design notes (kernel state): the layer keeps none of its own but the
// types of the sets it has seen (to encode their elements). Each engine
// owns one table per family and commits to it in one transaction per
// sync. Family is the one IP-family type of the engines; its Bridge is a
// table on the bridge's hooks (the policy engine's anti-spoofing), where
// IPv4, IPv6 and ARP fields are compiled behind the protocol check nft
// puts before them.
package nft

import (
	"context"
	"errors"
	"fmt"
	"strings"

	gnftables "github.com/google/nftables"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"
)

// ListRules implements Tables: the rules of chain over netlink, with their
// handles but not their text (the engines only count them).
func (k *kernel) ListRules(_ context.Context, chain string) ([]*knftables.Rule, error) {
	rules, err := k.conn.GetRules(&gnftables.Table{Name: k.table, Family: gnftables.TableFamily(k.fam.proto())}, &gnftables.Chain{Name: chain})
	if err != nil {
		// google/nftables formats the errno away (%v): match its text
		if errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), unix.ENOENT.Error()) {
			return nil, nil // no such table or chain: no rules
		}
		return nil, fmt.Errorf("list rules of %s: %w", chain, err)
	}
	out := make([]*knftables.Rule, len(rules))
	for i, r := range rules {
		out[i] = &knftables.Rule{Chain: chain, Handle: knftables.PtrTo(int(r.Handle))}
	}
	return out, nil
}

// MapKeys lists the keys of map name over netlink, as the kernel stores
// them: each field of a concatenation padded to 4 bytes (the proxy's
// restart reads its Service maps back this way).
func (k *kernel) MapKeys(name string) ([][]byte, error) {
	elems, err := k.conn.GetSetElements(&gnftables.Set{Table: &gnftables.Table{Name: k.table, Family: gnftables.TableFamily(k.fam.proto())}, Name: name})
	if err != nil {
		if strings.Contains(err.Error(), unix.ENOENT.Error()) {
			return nil, nil // no such table or map
		}
		return nil, fmt.Errorf("list map %s: %w", name, err)
	}
	keys := make([][]byte, len(elems))
	for i, e := range elems {
		keys[i] = e.Key
	}
	return keys, nil
}
