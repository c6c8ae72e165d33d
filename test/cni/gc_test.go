package cni_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/podnet"
	"github.com/flatnet-io/flatnet/internal/probe"
)

// GC with valid and stale attachments mixed: libcni DELs the stale ones it
// has cached; the plugin's own GC must release what the runtime forgot (a
// crashed ADD, an attachment whose cache entry was lost) and never touch a
// valid attachment.
func TestGCMixedValidAndStale(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	a, b, cached, forgotten := n.Pod("a"), n.Pod("b"), n.Pod("cached"), n.Pod("forgotten")
	ipA, ipB := podIP(t, n.Add(a)), podIP(t, n.Add(b))
	n.Add(cached)
	n.Add(forgotten)
	// The runtime lost its cache entry for "forgotten": only the plugin can clean it.
	matches, _ := filepath.Glob(filepath.Join(n.Dir, "cache", "results", "*"+forgotten.ID+"*"))
	if len(matches) != 1 {
		t.Fatalf("cache entries for %s: %v", forgotten.ID, matches)
	}
	if err := os.Remove(matches[0]); err != nil {
		t.Fatal(err)
	}
	n.allocateAsIfCrashed(t, "crashed")

	valid := []types.GCAttachment{{ContainerID: a.ID, IfName: "eth0"}, {ContainerID: b.ID, IfName: "eth0"}}
	if err := n.RT.GC(context.Background(), valid); err != nil {
		t.Fatalf("GC: %v", err)
	}

	wantVeths := []string{podnet.HostVethName("fntest", a.ID, "eth0"), podnet.HostVethName("fntest", b.ID, "eth0")}
	gotVeths := n.PluginVeths()
	slices.Sort(wantVeths)
	slices.Sort(gotVeths)
	if !slices.Equal(gotVeths, wantVeths) {
		t.Fatalf("veths after GC %v, want only those of a and b %v", gotVeths, wantVeths)
	}
	recs := n.Records()
	slices.Sort(recs)
	if want := []string{ipA + " " + a.ID + ":eth0", ipB + " " + b.ID + ":eth0"}; !slices.Equal(recs, want) {
		t.Fatalf("IPAM records after GC: %v, want only a's and b's", recs)
	}
	// The valid pods still work.
	if _, err := probe.Ping(a.NetNS, netip.MustParseAddr(ipB), 2*time.Second); err != nil {
		t.Fatalf("a -> b after GC: %v", err)
	}
	for _, p := range []cniruntime.Pod{a, b} {
		if err := n.RT.Check(context.Background(), p); err != nil {
			t.Fatalf("CHECK %s after GC: %v", p.Name, err)
		}
	}
	n.Del(a)
	n.Del(b)
	n.AssertClean()
}
