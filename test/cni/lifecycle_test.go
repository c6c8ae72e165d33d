package cni_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"

	"github.com/flatnet-io/flatnet/internal/cni"
	"github.com/flatnet-io/flatnet/internal/ipam"
	"github.com/flatnet-io/flatnet/internal/netns"
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

// DEL succeeds and releases the addresses when the namespace or the link is
// already gone (CNI spec: DEL tolerates missing things).
func TestDelToleratesMissingNamespace(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	p := n.pod("gone")
	n.add(p)
	p.NetNS = "/run/netns/" + suite.Prefix + "does-not-exist"
	n.del(p)
	p.NetNS = ""
	n.del(p)
	n.assertClean()

	deleted, unlinked := n.pod("deleted"), n.pod("unlinked")
	n.add(deleted)
	n.add(unlinked)
	if err := netns.Delete(n.name + "-deleted"); err != nil { // the veth pair goes with it
		t.Fatal(err)
	}
	h := n.handle()
	if err := h.LinkDel(mustLink(t, h, podnet.HostVethName("fntest", unlinked.ID, "eth0"))); err != nil {
		t.Fatal(err)
	}
	n.del(deleted)
	n.del(unlinked)
	n.assertClean()
}

// The "ips" and "mac" capabilities, passed by the runtime through libcni.
func TestCapabilitiesIPsAndMAC(t *testing.T) {
	n := newNode(t, "1.1.0", func(dataDir string) string {
		return strings.Replace(flatnetConf(dataDir), `"type": "flatnet-cni",`, `"type": "flatnet-cni", "capabilities": {"ips": true, "mac": true},`, 1)
	})
	p := n.pod("static")
	p.IPs = []string{"10.99.0.77/24"}
	p.MAC = "02:42:0a:63:00:4d"
	r := n.add(p)
	if podIP(t, r) != "10.99.0.77" || r.Interfaces[1].Mac != p.MAC {
		t.Fatalf("static request: ip %s mac %s", podIP(t, r), r.Interfaces[1].Mac)
	}
	if got := mustLink(t, handleAt(t, p.NetNS), "eth0").Attrs().HardwareAddr.String(); got != p.MAC {
		t.Fatalf("eth0 MAC in the pod is %s", got)
	}
	q := n.pod("clash")
	q.IPs = []string{"10.99.0.77/24"}
	_, err := n.rt.Add(context.Background(), q)
	if e := cniError(t, err); e.Code != cni.ErrAddressConflict {
		t.Fatalf("second pod asking for the same IP: code %d %q", e.Code, e.Msg)
	}
	n.del(q)
	n.del(p)
	n.assertClean()
}

// IPv4 and IPv6 range sets: one address of each family, a default route each.
func TestDualStack(t *testing.T) {
	n := newNode(t, "1.1.0", func(dataDir string) string {
		return fmt.Sprintf(`{"type": "flatnet-cni", "bridge": "fn0", "ipam": {"ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd00:99::/64"}]], "dataDir": %q}}`, dataDir)
	})
	p := n.pod("ds")
	r := n.add(p)
	if len(r.IPs) != 2 || r.IPs[1].Address.String() != "fd00:99::2/64" || r.IPs[1].Gateway.String() != "fd00:99::1" {
		t.Fatalf("dual-stack IPs: %s", mustJSON(r.IPs))
	}
	if len(r.Routes) != 2 || r.Routes[1].Dst.String() != "::/0" {
		t.Fatalf("dual-stack routes: %s", mustJSON(r.Routes))
	}
	if err := n.rt.Check(context.Background(), p); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	n.del(p)
	n.assertClean()
}

// An interface of that name that the plugin did not make: ADD fails with
// code 101 and releases the address it took.
func TestAddRefusesForeignInterface(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	p := n.pod("taken")
	h := handleAt(t, p.NetNS)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "eth0"
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "other"}); err != nil {
		t.Fatal(err)
	}
	_, err := n.rt.Add(context.Background(), p)
	if e := cniError(t, err); e.Code != cni.ErrInterfaceExists {
		t.Fatalf("ADD over a foreign eth0: code %d %q", e.Code, e.Msg)
	}
	n.del(p) // containerd DELs after a failed ADD: the foreign eth0 must survive
	n.assertClean()
	if _, err := h.LinkByName("eth0"); err != nil {
		t.Fatalf("the foreign eth0 was removed: %v", err)
	}
}

// A DEL that cannot remove the pod's interface (here: the plugin runs
// without CAP_NET_ADMIN) fails and keeps the addresses, so that no other pod
// gets them while the interface lives; the runtime's retry releases them.
func TestDelKeepsAddressesWhileInterfaceRemains(t *testing.T) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv (util-linux) to run the plugin without CAP_NET_ADMIN")
	}
	n := newNode(t, "1.1.0", flatnetConf)
	p := n.pod("a")
	ip := podIP(t, n.add(p))
	env := map[string]string{"CNI_COMMAND": "DEL", "CNI_CONTAINERID": p.ID, "CNI_NETNS": p.NetNS, "CNI_IFNAME": "eth0", "CNI_PATH": suite.PluginDir}
	out, err := n.execPlugin(t, env, pluginStdin(n.dataDir), setpriv, "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--")
	var e types.Error
	if err == nil || json.Unmarshal(out, &e) != nil || e.Code != cni.ErrDatapathFailure {
		t.Fatalf("DEL without CAP_NET_ADMIN: err %v, out %s; want code %d", err, out, cni.ErrDatapathFailure)
	}
	if v := n.pluginVeths(); len(v) != 1 {
		t.Fatalf("host veths after the failed DEL: %v", v)
	}
	if r := n.records(); len(r) != 1 || r[0] != ip+" "+p.ID+":eth0" {
		t.Fatalf("IPAM records after the failed DEL: %v, want %s kept for %s", r, ip, p.ID)
	}
	n.del(p)
	n.assertClean()
}
