package policy_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/policy"
)

// A restarted engine's first commit keeps the counters of pods still
// isolated (their counts go on) and deletes those of pods gone meanwhile,
// whose map elements it flushes in the same transaction: the kernel
// takes it.
func TestRestartDeletesStaleCounters(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace, nftables)")
	}
	name := fmt.Sprintf("fn-t%d-pol-counters", os.Getpid())
	path, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = netns.Delete(name) }()
	ctx := context.Background()
	var before, after []string
	err = netns.Do(path, func() error {
		all := &policy.Cluster{Policies: denyAll, Pods: pods(), Namespaces: namespaces()}
		fewer := &policy.Cluster{Policies: denyAll, Pods: pods()[1:], Namespaces: namespaces()} // x/a gone
		for i, c := range []*policy.Cluster{all, fewer} {
			tables, err := nft.New(nft.IPv4, policy.Table)
			if err != nil {
				return err
			}
			if err := policy.NewEngine(nft.IPv4, "n1", tables, staticSource{c}, quiet).Sync(ctx); err != nil {
				return fmt.Errorf("engine %d: %w", i, err)
			}
			cs, err := tables.ListCounters(ctx)
			if err != nil {
				return err
			}
			names := []string{}
			for _, c := range cs {
				names = append(names, c.Name)
			}
			slices.Sort(names)
			before, after = after, names
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(before, "ingress-denied-10.244.1.10") || slices.Contains(after, "ingress-denied-10.244.1.10") ||
		!slices.Contains(after, "ingress-denied-10.244.1.12") || len(after) != len(before)-4 {
		t.Errorf("counters before the restart %v, after %v: want x/a's four gone, the others kept", before, after)
	}
}
