package nft

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// What the Fake accepts and the kernel refuses, against the kernel in a
// throwaway namespace: a second value for a map key and the deletion of a
// missing element are typed errors naming the refused element, and the
// kernel applies nothing of a refused transaction.
func TestKernelRefusalsAreTyped(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace, nftables)")
	}
	name := fmt.Sprintf("fn-nft%d", os.Getpid()%100000)
	path, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Delete(name) })
	if err := netns.Do(path, func() error { return refusals(t) }); err != nil {
		t.Fatal(err)
	}
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
	tx := nft.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Add(&knftables.Map{Name: "m", Type: "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service"})
	tx.Add(elem("10.0.0.1", "10.1.0.1"))
	if err := nft.Run(ctx, tx); err != nil {
		return err
	}
	tx = nft.NewTransaction()
	tx.Add(elem("10.0.0.2", "10.1.0.1"))
	tx.Add(elem("10.0.0.1", "10.1.0.2"))
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
	tx = nft.NewTransaction()
	tx.Delete(&knftables.Element{Map: "m", Key: []string{"10.0.0.9", "tcp", "80"}})
	err = nft.Run(ctx, tx)
	if !IsNotFound(err) {
		t.Errorf("deleting a missing element: %v, want a not-found error", err)
	}
	if e, ok := err.(*Error); !ok || e.Object != "10.0.0.9 . tcp . 80" {
		t.Errorf("the error names %#v, want the missing element", err)
	}
	return nil
}

// Elements written over netlink are the elements nft writes: the same
// listing, comments included; deleted the same way; a refused one typed.
func TestElementsOverNetlinkAsNftWritesThem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace, nftables)")
	}
	name := fmt.Sprintf("fn-nftel%d", os.Getpid()%100000)
	path, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Delete(name) })
	if err := netns.Do(path, func() error { return elementsBothWays(t) }); err != nil {
		t.Fatal(err)
	}
}

var testTypes4 = map[string]string{
	"vips":      "ipv4_addr . inet_proto . inet_service : verdict",
	"eps":       "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service",
	"nodeports": "inet_proto . inet_service : ipv4_addr . inet_service",
	"ips":       "ipv4_addr",
	"pairs":     "ipv4_addr . ipv4_addr",
}

var testOps4 = []ElementOp{
	{Set: "vips", Key: []string{"10.96.0.10", "tcp", "80"}, Value: []string{"goto lb"}, Comment: "ns/web/tcp/http"},
	{Set: "vips", Key: []string{"10.96.0.11", "udp", "53"}, Value: []string{"drop"}},
	{Set: "eps", Key: []string{"10.96.0.10", "tcp", "80"}, Value: []string{"10.244.1.2", "8080"}},
	{Set: "nodeports", Key: []string{"udp", "30053"}, Value: []string{"10.244.1.3", "53"}},
	{Set: "ips", Key: []string{"10.96.0.10"}},
	{Set: "pairs", Key: []string{"10.244.1.2", "10.244.1.2"}},
}

var v6 = strings.NewReplacer("ipv4_addr", "ipv6_addr", "10.96.0.10", "fd00:96::10", "10.96.0.11", "fd00:96::11",
	"10.244.1.2", "fd00:244::2", "10.244.1.3", "fd00:244::3")

// testSets are the test's set types and element changes in family fam.
func testSets(fam Family) (map[string]string, []ElementOp) {
	if fam == IPv4 {
		return testTypes4, testOps4
	}
	types := map[string]string{}
	for k, v := range testTypes4 {
		types[k] = v6.Replace(v)
	}
	var ops []ElementOp
	for _, op := range testOps4 {
		op.Key, op.Value = slices.Clone(op.Key), slices.Clone(op.Value)
		for i := range op.Key {
			op.Key[i] = v6.Replace(op.Key[i])
		}
		for i := range op.Value {
			op.Value[i] = v6.Replace(op.Value[i])
		}
		ops = append(ops, op)
	}
	return types, ops
}

// table makes table name with the test sets, and elements in it through
// nft when viaNft is set.
func testTable(ctx context.Context, fam Family, name string, viaNft bool) (knftables.Interface, error) {
	testTypes, testOps := testSets(fam)
	nft, err := New(fam, name)
	if err != nil {
		return nil, err
	}
	tx := nft.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Add(&knftables.Chain{Name: "lb"})
	for _, set := range slices.Sorted(maps.Keys(testTypes)) {
		if typ := testTypes[set]; strings.Contains(typ, " : ") {
			tx.Add(&knftables.Map{Name: set, Type: typ})
		} else {
			tx.Add(&knftables.Set{Name: set, Type: testTypes[set]})
		}
	}
	for _, op := range testOps {
		if !viaNft {
			break
		}
		e := &knftables.Element{Key: op.Key, Value: op.Value}
		if op.Comment != "" {
			e.Comment = knftables.PtrTo(op.Comment)
		}
		if strings.Contains(testTypes[op.Set], " : ") {
			e.Map = op.Set
		} else {
			e.Set = op.Set
		}
		tx.Add(e)
	}
	return nft, nft.Run(ctx, tx)
}

// listTable lists the elements of each set of table name, sorted (a hash
// set lists its elements in an order of its own).
func listTable(fam Family, name string) string {
	out, _ := exec.Command("nft", "list", "table", fam.IP(), name).CombinedOutput()
	var b strings.Builder
	for _, m := range setBlock.FindAllStringSubmatch(strings.Join(strings.Fields(string(out)), " "), -1) {
		elems := strings.Split(m[2], ", ")
		slices.Sort(elems)
		fmt.Fprintf(&b, "%s: %s\n", m[1], strings.Join(elems, ", "))
	}
	return b.String()
}

var setBlock = regexp.MustCompile(`(?:set|map) (\S+) \{ type [^}]*?elements = \{ ([^}]*) \}`)

func elementsBothWays(t *testing.T) error {
	for _, fam := range []Family{IPv4, IPv6} {
		if err := elementsBothWaysIn(t, fam); err != nil {
			return fmt.Errorf("%s: %w", fam, err)
		}
	}
	return nil
}

func elementsBothWaysIn(t *testing.T, fam Family) error {
	ctx := context.Background()
	testTypes, testOps := testSets(fam)
	if _, err := testTable(ctx, fam, "fn-via-nft", true); err != nil {
		return err
	}
	nl, err := testTable(ctx, fam, "fn-via-netlink", false)
	if err != nil {
		return err
	}
	if err := nl.(ElementWriter).RunElements(ctx, testTypes, testOps); err != nil {
		return err
	}
	if a, b := listTable(fam, "fn-via-nft"), listTable(fam, "fn-via-netlink"); a != b || strings.Count(a, "\n") != len(testTypes) {
		t.Errorf("%s: over netlink the table reads\n%s\nthrough nft\n%s", fam, b, a)
	}
	var dels []ElementOp
	for _, op := range testOps {
		dels = append(dels, ElementOp{Delete: true, Set: op.Set, Key: op.Key})
	}
	if err := nl.(ElementWriter).RunElements(ctx, testTypes, dels); err != nil {
		return err
	}
	if got := listTable(fam, "fn-via-netlink"); got != "" {
		t.Errorf("%s: after deleting every element:\n%s", fam, got)
	}
	err = nl.(ElementWriter).RunElements(ctx, testTypes, dels[:1])
	if !IsNotFound(err) {
		t.Errorf("%s: deleting a missing element over netlink: %v, want a not-found error", fam, err)
	}
	return nil
}
