package nft

import (
	"context"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/netnstest"
)

// What the Fake accepts and the kernel refuses, against the kernel in a
// throwaway namespace: a second value for a map key and the deletion of a
// missing element are typed errors naming the refused element, and the
// kernel applies nothing of a refused transaction.
func TestKernelRefusalsAreTyped(t *testing.T) {
	netnstest.Run(t, "nftr", func() error { return refusals(t) })
}

func refusals(t *testing.T) error {
	ctx := context.Background()
	nft, err := New(IPv4, "fn-test")
	if err != nil {
		return err
	}
	elem := func(addr, to string) *knftables.Element {
		return &knftables.Element{Map: "m", Key: []string{addr, "tcp", "80"}, Value: []string{to, "8080"}}
	}
	tx := nft.NewTx()
	tx.Add(&knftables.Table{})
	tx.Add(&knftables.Map{Name: "m", Type: "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service"})
	tx.Add(elem("10.0.0.1", "10.1.0.1"))
	if err := nft.Run(ctx, tx); err != nil {
		return err
	}
	tx = nft.NewTx()
	tx.Add(elem("10.0.0.2", "10.1.0.1"))
	tx.Add(elem("10.0.0.1", "10.1.0.2"))
	tx.Add(elem("10.0.0.3", "10.1.0.1"))
	err = nft.Run(ctx, tx)
	if !IsAlreadyExists(err) || IsNotFound(err) {
		t.Errorf("a second value for a key: %v, want an already-exists error", err)
	}
	if e, ok := err.(*Error); !ok || e.Object != "10.0.0.1 . tcp . 80" {
		t.Errorf("the error names %#v, want the refused key", err)
	}
	keys, err := nft.(interface {
		MapKeys(string) ([][]byte, error)
	}).MapKeys("m")
	if err != nil || len(keys) != 1 {
		t.Errorf("after the refused transaction the map has %d keys (%v), want the 1 it had", len(keys), err)
	}
	tx = nft.NewTx()
	tx.Delete(&knftables.Element{Map: "m", Key: []string{"10.0.0.9", "tcp", "80"}})
	err = nft.Run(ctx, tx)
	if !IsNotFound(err) {
		t.Errorf("deleting a missing element: %v, want a not-found error", err)
	}
	if e, ok := err.(*Error); !ok || e.Object != "10.0.0.9 . tcp . 80" {
		t.Errorf("the error names %#v, want the missing element", err)
	}
	tx = nft.NewTx()
	tx.Add(&knftables.Rule{Chain: "nowhere", Rule: "drop"})
	err = nft.Run(ctx, tx)
	if e, ok := err.(*Error); !ok || !IsNotFound(err) || e.Command != "add rule ip fn-test nowhere drop" {
		t.Errorf("a rule in a missing chain: %#v, want a not-found error naming the rule", err)
	}
	return nil
}

// A Tables that did not declare an interval set (a restarted agent) learns
// it from the kernel and sends its elements with their end keys.
func TestIntervalSetLearnedFromTheKernel(t *testing.T) {
	netnstest.Run(t, "nfti", func() error {
		ctx := context.Background()
		for _, fam := range []Family{IPv4, IPv6} {
			first, err := New(fam, "fn-test")
			if err != nil {
				return err
			}
			v := func(s string) string {
				if fam == IPv6 {
					return ip6ify.Replace(s)
				}
				return s
			}
			tx := first.NewTx()
			tx.Add(&knftables.Table{})
			tx.Add(&knftables.Set{Name: "s", Type: v("ipv4_addr . ipv4_addr . inet_service"), Flags: []knftables.SetFlag{knftables.IntervalFlag}})
			if err := first.Run(ctx, tx); err != nil {
				return err
			}
			second, err := New(fam, "fn-test")
			if err != nil {
				return err
			}
			tx = second.NewTx()
			tx.Add(&knftables.Element{Set: "s", Key: []string{v("10.244.1.2"), v("10.244.0.0/16"), "80-90"}})
			if err := second.Run(ctx, tx); err != nil {
				t.Errorf("%s: an interval element through a Tables that did not declare the set: %v", fam, err)
			}
		}
		return nil
	})
}

// What a transaction wrote reads back over netlink as the Fake lists it:
// keys of every field type, map values, element comments.
func TestListElementsReadsBack(t *testing.T) {
	netnstest.Run(t, "nftl", func() error {
		ctx := context.Background()
		for _, fam := range []Family{IPv4, IPv6} {
			nl, err := New(fam, "fn-test")
			if err != nil {
				return err
			}
			fake := NewFake(fam, "fn-test")
			for _, tables := range []Tables{nl, fake} {
				tx := tables.NewTx()
				oracleTx(tx, fam)
				if err := tables.Run(ctx, tx); err != nil {
					return err
				}
			}
			// a second Tables on the kernel learns the sets' types from it
			again, err := New(fam, "fn-test")
			if err != nil {
				return err
			}
			for _, o := range []struct{ typ, name string }{{"set", "attached"}, {"set", "cluster-ips"}, {"set", "hairpin"},
				{"map", "endpoints-0"}, {"map", "nodeport-endpoints-0"}, {"set", "nowhere"}} {
				got, err := again.ListElements(ctx, o.typ, o.name)
				if err != nil {
					t.Errorf("%s: list %s: %v", fam, o.name, err)
					continue
				}
				want, _ := fake.ListElements(ctx, o.typ, o.name)
				if g, w := elementLines(got), elementLines(want); g != w {
					t.Errorf("%s: %s %s reads back as\n%s\nwant\n%s", fam, o.typ, o.name, g, w)
				}
			}
			counters, err := again.ListCounters(ctx)
			var names []string
			for _, c := range counters {
				if c.Packets == nil || *c.Packets != 0 {
					t.Errorf("%s: counter %s reads %v packets", fam, c.Name, c.Packets)
				}
				names = append(names, c.Name)
			}
			if slices.Sort(names); err != nil || strings.Join(names, " ") != "commented in-1 in-2 spoofed" {
				t.Errorf("%s: counters %v (%v)", fam, names, err)
			}
			for _, s := range []string{"allow-tcp", "service-ips"} { // intervals; a verdict map's key type is lost
				if _, err := again.ListElements(ctx, "set", s); err == nil {
					t.Errorf("%s: %s read back without an error", fam, s)
				}
			}
		}
		return nil
	})
}

func elementLines(els []*knftables.Element) string {
	var lines []string
	for _, e := range els {
		l := e.Set + e.Map + ": " + strings.Join(e.Key, " . ")
		if len(e.Value) > 0 {
			l += " : " + strings.Join(e.Value, " . ")
		}
		if e.Comment != nil {
			l += " # " + *e.Comment
		}
		lines = append(lines, l)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// An empty transaction commits nothing and is no error.
func TestEmptyTransaction(t *testing.T) {
	netnstest.Run(t, "nfte", func() error {
		tables, err := New(IPv4, "fn-test")
		if err != nil {
			return err
		}
		return tables.Run(context.Background(), tables.NewTx())
	})
}
