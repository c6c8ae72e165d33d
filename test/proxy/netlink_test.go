package proxy_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/proxy"
)

// Partial syncs that only change elements go to the kernel over netlink,
// not through nft. After every step of a sequence of changes, the table
// they leave is the table a fresh proxier's full sync (through nft) writes
// for the same Services, compared object by object, and the Services
// answer with the endpoints they have.
func TestPartialSyncsOverNetlinkMatchAFullSync(t *testing.T) {
	e := newEnv(t, "")
	a, b, c, client := e.addPod("a"), e.addPod("b"), e.addPod("c"), e.addPod("client")
	services := map[string]*corev1.Service{}
	slices_ := map[string]*discoveryv1.EndpointSlice{}
	set := func(s *corev1.Service, sl *discoveryv1.EndpointSlice) {
		services[s.Name], slices_[s.Name] = s, sl
		e.proxier.UpdateService(s)
		e.proxier.UpdateSlice(sl)
	}
	steps := []func(){
		func() {
			set(svc("web", "10.96.0.100", nodePort(30700, 30701)), slice("web", readyOn(a, "node-1"), readyOn(b, "node-1")))
			set(svc("api", "10.96.0.101", externalIPs("192.168.99.20")), slice("api", readyOn(c, "node-1")))
		},
		func() { set(services["web"], slice("web", readyOn(a, "node-1"), readyOn(c, "node-1"))) }, // an endpoint replaced
		func() { set(services["api"], slice("api", readyOn(b, "node-1"))) },
		func() { set(services["web"], slice("web", readyOn(b, "node-1"))) }, // 2 -> 1 endpoints
		func() { set(services["api"], slice("api")) },                       // no endpoints: reject
		func() { set(services["api"], slice("api", readyOn(a, "node-1"))) },
	}
	for i, step := range steps {
		step()
		e.sync()
		var list []*corev1.Service
		var sls []*discoveryv1.EndpointSlice
		for name, s := range services {
			list, sls = append(list, s), append(sls, slices_[name])
		}
		if got, want := normalTable(t, e.node), freshTable(t, list, sls); got != want {
			t.Fatalf("step %d: the table after partial syncs\n%s\ndiffers from a full sync's\n%s", i, got, want)
		}
	}
	reg := prometheus.NewRegistry()
	e.proxier.Metrics().Register(reg)
	if n := syncsOfKind(t, reg, "elements"); n < 2 {
		t.Errorf("%v partial syncs went over netlink, want at least the 2 endpoint replacements", n)
	}
	only(t, client.ns, "10.96.0.100:80", "b")
	only(t, e.outside, hostPort(nodeUplinkIP, 30700), "b")
	only(t, e.outside, "192.168.99.20:80", "a")
}

// freshTable is the normalized IPv4 table a new proxier writes for these
// objects in a namespace of its own.
func freshTable(t *testing.T, services []*corev1.Service, sls []*discoveryv1.EndpointSlice) string {
	t.Helper()
	name := suite.NewName() + "-fresh"
	path, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = netns.Delete(name) }()
	err = netns.Do(path, func() error {
		tables, err := nft.New(nft.IPv4, proxy.Table)
		if err != nil {
			return err
		}
		p := proxy.New(proxy.Config{Family: proxy.IPv4, NodeName: "node-1", ClusterCIDR: netip.MustParsePrefix(clusterCIDR)},
			tables, nsConntrack{path, proxy.IPv4}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		defer p.Close()
		for i, s := range services {
			p.UpdateService(s)
			p.UpdateSlice(sls[i])
		}
		return p.Sync(context.Background())
	})
	if err != nil {
		t.Fatal(err)
	}
	return normalTable(t, path)
}

// normalTable lists the IPv4 proxy table of a namespace as sorted JSON
// objects without handles, elements sorted: what it holds, not in which
// order it was made.
func normalTable(t *testing.T, nsPath string) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+nsPath, "nft", "-j", "list", "table", "ip", proxy.Table).Output()
	if err != nil {
		t.Fatalf("nft -j list table: %v", err)
	}
	var doc struct {
		Nftables []map[string]any `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	var objs []string
	for _, o := range doc.Nftables {
		if _, ok := o["metainfo"]; ok {
			continue
		}
		b, _ := json.Marshal(normalize(o))
		objs = append(objs, string(b))
	}
	slices.Sort(objs)
	return strings.Join(objs, "\n")
}

// normalize drops handles and sorts element lists.
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		delete(x, "handle")
		for k, val := range x {
			x[k] = normalize(val)
		}
		if elems, ok := x["elem"].([]any); ok {
			slices.SortFunc(elems, func(a, b any) int {
				ja, _ := json.Marshal(a)
				jb, _ := json.Marshal(b)
				return strings.Compare(string(ja), string(jb))
			})
		}
	case []any:
		for i := range x {
			x[i] = normalize(x[i])
		}
	}
	return v
}

// syncsOfKind reads flatnet_proxy_syncs_total{kind} from reg.
func syncsOfKind(t *testing.T, reg *prometheus.Registry, kind string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "flatnet_proxy_syncs_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
