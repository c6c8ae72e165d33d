package cni_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"

	"github.com/flatnet-io/flatnet/internal/cni"
	"github.com/flatnet-io/flatnet/internal/ipam"
	"github.com/flatnet-io/flatnet/internal/podnet"
	"github.com/flatnet-io/flatnet/internal/probe"
)

// ADD -> CHECK -> DEL -> DEL through libcni for every supported version.
func TestLifecycleEveryVersion(t *testing.T) {
	for _, v := range cni.SupportedVersions {
		t.Run(v, func(t *testing.T) {
			n := newNode(t, v, flatnetConf)
			p := n.pod("a")
			res, err := n.rt.Add(context.Background(), p)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if res.Version() != v {
				t.Fatalf("result version %s, want %s", res.Version(), v)
			}
			r := n.add(p) // a repeated ADD keeps the address
			if got := podIP(t, r); got != "10.99.0.2" {
				t.Fatalf("pod IP %s, want 10.99.0.2", got)
			}
			if len(r.Interfaces) != 2 || r.Interfaces[1].Name != "eth0" || r.Interfaces[1].Sandbox != p.NetNS || r.Interfaces[0].Sandbox != "" {
				t.Fatalf("interfaces: %s", mustJSON(r.Interfaces))
			}
			if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" || r.IPs[0].Gateway.String() != "10.99.0.1" {
				t.Fatalf("routes %s, ips %s", mustJSON(r.Routes), mustJSON(r.IPs))
			}
			checkErr := n.rt.Check(context.Background(), p)
			if ok, _ := version.GreaterThanOrEqualTo(v, "0.4.0"); ok {
				if checkErr != nil {
					t.Fatalf("CHECK right after ADD: %v", checkErr)
				}
			} else if checkErr == nil {
				t.Fatalf("CHECK accepted for version %s, which has no CHECK", v)
			}
			n.del(p)
			n.del(p) // idempotent
			n.assertClean()
		})
	}
}

func TestPodsReachEachOtherAndTheGateway(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	a, b := n.pod("a"), n.pod("b")
	ipA, ipB := podIP(t, n.add(a)), podIP(t, n.add(b))
	for _, c := range []struct {
		from string
		to   string
	}{{a.NetNS, ipB}, {b.NetNS, ipA}, {a.NetNS, "10.99.0.1"}, {b.NetNS, "10.99.0.1"}} {
		if _, err := probe.Ping(c.from, netip.MustParseAddr(c.to), 2*time.Second); err != nil {
			t.Errorf("ping from %s to %s: %v", c.from, c.to, err)
		}
	}
	// Node side: the bridge holds the gateway, forwarding is on, ports hairpin.
	h := n.handle()
	br, err := h.LinkByName("fn0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := h.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.99.0.1/24" {
		t.Fatalf("bridge addresses %v", addrs)
	}
	for _, name := range n.pluginVeths() {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if pi, err := h.LinkGetProtinfo(l); err != nil || !pi.Hairpin {
			t.Errorf("%s: hairpin mode is off (%v)", name, err)
		}
		if l.Attrs().MasterIndex != br.Attrs().Index {
			t.Errorf("%s is not a port of fn0", name)
		}
	}
	n.del(a)
	n.del(b)
	n.assertClean()
}

// A plugin killed after the IPAM allocation but before the veth was made,
// then the runtime retrying ADD: same address, nothing leaked.
func TestRepeatedAddAfterCrashGetsSameIP(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	p := n.pod("a")
	cfg, err := cni.ParseConfig([]byte(`{"name": "fntest", ` + strings.TrimPrefix(flatnetConf(n.dataDir), "{")))
	if err != nil {
		t.Fatal(err)
	}
	alloc, err := ipam.New(cfg.IPAM)
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	crashed, err := alloc.Allocate(ipam.Owner{ContainerID: p.ID, IfName: "eth0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := n.add(p)
	if podIP(t, r) != crashed[0].Addr.String() {
		t.Fatalf("retry got %s, the crashed ADD had %s", podIP(t, r), crashed[0].Addr)
	}
	// Crash after the veth was made (no cached result): ADD again replaces it.
	r2 := n.add(p)
	if podIP(t, r2) != podIP(t, r) || len(n.pluginVeths()) != 1 || len(n.records()) != 1 {
		t.Fatalf("second retry: ip %s, veths %v, records %v", podIP(t, r2), n.pluginVeths(), n.records())
	}
	if err := n.rt.Check(context.Background(), p); err != nil {
		t.Fatalf("CHECK after retries: %v", err)
	}
	n.del(p)
	n.assertClean()
}

func TestCheckReportsDrift(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	p := n.pod("a")
	r := n.add(p)
	h := handleAt(t, p.NetNS)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr(r.IPs[0].Address.String())
	if err := h.AddrDel(eth0, addr); err != nil {
		t.Fatal(err)
	}
	err = n.rt.Check(context.Background(), p)
	if e := cniError(t, err); e.Code != cni.ErrAttachmentDrift || !strings.Contains(e.Msg, "lacks address 10.99.0.2/24") || !strings.Contains(e.Msg, "route to 0.0.0.0/0") {
		t.Fatalf("CHECK after removing the address: code %d %q", e.Code, e.Msg)
	}
	// The host side drifting is reported too.
	if err := n.handle().LinkSetNoMaster(mustLink(t, n.handle(), podnet.HostVethName("fntest", p.ID, "eth0"))); err != nil {
		t.Fatal(err)
	}
	if e := cniError(t, n.rt.Check(context.Background(), p)); !strings.Contains(e.Msg, "not a port of bridge fn0") {
		t.Fatalf("CHECK after unplugging the veth: %q", e.Msg)
	}
	n.del(p)
	n.assertClean()
}

func mustLink(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestDelToleratesMissingNamespace(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	p := n.pod("gone")
	n.add(p)
	p.NetNS = "/run/netns/" + prefix + "does-not-exist"
	n.del(p)
	p.NetNS = ""
	n.del(p)
	n.assertClean()
}
