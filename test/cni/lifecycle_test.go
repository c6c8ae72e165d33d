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
	"github.com/flatnet-io/flatnet/internal/cnitest"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/podnet"
	"github.com/flatnet-io/flatnet/internal/probe"
)

// ADD -> CHECK -> DEL -> DEL through libcni for every supported version.
func TestLifecycleEveryVersion(t *testing.T) {
	for _, v := range cni.SupportedVersions {
		t.Run(v, func(t *testing.T) {
			n := newNode(t, v, flatnetConf)
			p := n.Pod("a")
			res, err := n.RT.Add(context.Background(), p)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if res.Version() != v {
				t.Fatalf("result version %s, want %s", res.Version(), v)
			}
			r := n.Add(p) // a repeated ADD keeps the address
			if got := podIP(t, r); got != "10.99.0.2" {
				t.Fatalf("pod IP %s, want 10.99.0.2", got)
			}
			if len(r.Interfaces) != 2 || r.Interfaces[1].Name != "eth0" || r.Interfaces[1].Sandbox != p.NetNS || r.Interfaces[0].Sandbox != "" {
				t.Fatalf("interfaces: %s", mustJSON(r.Interfaces))
			}
			if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" || r.IPs[0].Gateway.String() != "10.99.0.1" {
				t.Fatalf("routes %s, ips %s", mustJSON(r.Routes), mustJSON(r.IPs))
			}
			checkErr := n.RT.Check(context.Background(), p)
			if ok, _ := version.GreaterThanOrEqualTo(v, "0.4.0"); ok {
				if checkErr != nil {
					t.Fatalf("CHECK right after ADD: %v", checkErr)
				}
			} else if checkErr == nil {
				t.Fatalf("CHECK accepted for version %s, which has no CHECK", v)
			}
			n.Del(p)
			n.Del(p) // idempotent
			n.AssertClean()
		})
	}
}

func TestPodsReachEachOtherAndTheGateway(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	a, b := n.Pod("a"), n.Pod("b")
	ipA, ipB := podIP(t, n.Add(a)), podIP(t, n.Add(b))
	for _, c := range []struct {
		from string
		to   string
	}{{a.NetNS, ipB}, {b.NetNS, ipA}, {a.NetNS, "10.99.0.1"}, {b.NetNS, "10.99.0.1"}} {
		if _, err := probe.Ping(c.from, netip.MustParseAddr(c.to), 2*time.Second); err != nil {
			t.Errorf("ping from %s to %s: %v", c.from, c.to, err)
		}
	}
	// Node side: the bridge holds the gateway, forwarding is on, ports hairpin.
	h := n.Handle()
	br, err := h.LinkByName("fn0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := h.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.99.0.1/24" {
		t.Fatalf("bridge addresses %v", addrs)
	}
	for _, name := range n.PluginVeths() {
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
	n.Del(a)
	n.Del(b)
	n.AssertClean()
}

// A plugin killed after the IPAM allocation but before the veth was made,
// then the runtime retrying ADD: same address, nothing leaked.
func TestRepeatedAddAfterCrashGetsSameIP(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	p := n.Pod("a")
	crashed := n.allocateAsIfCrashed(t, p.ID)
	r := n.Add(p)
	if podIP(t, r) != crashed.String() {
		t.Fatalf("retry got %s, the crashed ADD had %s", podIP(t, r), crashed)
	}
	// Crash after the veth was made (no cached result): ADD again replaces it.
	r2 := n.Add(p)
	if podIP(t, r2) != podIP(t, r) || len(n.PluginVeths()) != 1 || len(n.Records()) != 1 {
		t.Fatalf("second retry: ip %s, veths %v, records %v", podIP(t, r2), n.PluginVeths(), n.Records())
	}
	if err := n.RT.Check(context.Background(), p); err != nil {
		t.Fatalf("CHECK after retries: %v", err)
	}
	n.Del(p)
	n.AssertClean()
}

func TestCheckReportsDrift(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	p := n.Pod("a")
	r := n.Add(p)
	h := cnitest.HandleAt(t, p.NetNS)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr(r.IPs[0].Address.String())
	if err := h.AddrDel(eth0, addr); err != nil {
		t.Fatal(err)
	}
	err = n.RT.Check(context.Background(), p)
	if e := cniError(t, err); e.Code != cni.ErrAttachmentDrift || !strings.Contains(e.Msg, "lacks address 10.99.0.2/24") || !strings.Contains(e.Msg, "route to 0.0.0.0/0") {
		t.Fatalf("CHECK after removing the address: code %d %q", e.Code, e.Msg)
	}
	// The host side drifting is reported too.
	if err := n.Handle().LinkSetNoMaster(mustLink(t, n.Handle(), podnet.HostVethName("fntest", p.ID, "eth0"))); err != nil {
		t.Fatal(err)
	}
	if e := cniError(t, n.RT.Check(context.Background(), p)); !strings.Contains(e.Msg, "not a port of bridge fn0") {
		t.Fatalf("CHECK after unplugging the veth: %q", e.Msg)
	}
	n.Del(p)
	n.AssertClean()
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
	p := n.Pod("gone")
	n.Add(p)
	p.NetNS = "/run/netns/" + suite.Prefix + "does-not-exist"
	n.Del(p)
	p.NetNS = ""
	n.Del(p)
	n.AssertClean()

	deleted, unlinked := n.Pod("deleted"), n.Pod("unlinked")
	n.Add(deleted)
	n.Add(unlinked)
	if err := netns.Delete(n.Name + "-deleted"); err != nil { // the veth pair goes with it
		t.Fatal(err)
	}
	h := n.Handle()
	if err := h.LinkDel(mustLink(t, h, podnet.HostVethName("fntest", unlinked.ID, "eth0"))); err != nil {
		t.Fatal(err)
	}
	n.Del(deleted)
	n.Del(unlinked)
	n.AssertClean()
}

// The "ips" and "mac" capabilities, passed by the runtime through libcni.
func TestCapabilitiesIPsAndMAC(t *testing.T) {
	n := newNode(t, "1.1.0", func(dataDir string) string {
		return strings.Replace(flatnetConf(dataDir), `"type": "flatnet-cni",`, `"type": "flatnet-cni", "capabilities": {"ips": true, "mac": true},`, 1)
	})
	p := n.Pod("static")
	p.IPs = []string{"10.99.0.77/24"}
	p.MAC = "02:42:0a:63:00:4d"
	r := n.Add(p)
	if podIP(t, r) != "10.99.0.77" || r.Interfaces[1].Mac != p.MAC {
		t.Fatalf("static request: ip %s mac %s", podIP(t, r), r.Interfaces[1].Mac)
	}
	if got := mustLink(t, cnitest.HandleAt(t, p.NetNS), "eth0").Attrs().HardwareAddr.String(); got != p.MAC {
		t.Fatalf("eth0 MAC in the pod is %s", got)
	}
	q := n.Pod("clash")
	q.IPs = []string{"10.99.0.77/24"}
	_, err := n.RT.Add(context.Background(), q)
	if e := cniError(t, err); e.Code != cni.ErrAddressConflict {
		t.Fatalf("second pod asking for the same IP: code %d %q", e.Code, e.Msg)
	}
	n.Del(q)
	n.Del(p)
	n.AssertClean()
}

// IPv4 and IPv6 range sets: one address of each family, a default route each.
func TestDualStack(t *testing.T) {
	n := newNode(t, "1.1.0", func(dataDir string) string {
		return fmt.Sprintf(`{"type": "flatnet-cni", "bridge": "fn0", "ipam": {"ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd00:99::/64"}]], "dataDir": %q}}`, dataDir)
	})
	p := n.Pod("ds")
	r := n.Add(p)
	if len(r.IPs) != 2 || r.IPs[1].Address.String() != "fd00:99::2/64" || r.IPs[1].Gateway.String() != "fd00:99::1" {
		t.Fatalf("dual-stack IPs: %s", mustJSON(r.IPs))
	}
	if len(r.Routes) != 2 || r.Routes[1].Dst.String() != "::/0" {
		t.Fatalf("dual-stack routes: %s", mustJSON(r.Routes))
	}
	if err := n.RT.Check(context.Background(), p); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	n.Del(p)
	n.AssertClean()
}

// An interface of that name that the plugin did not make: ADD fails with
// code 101 and releases the address it took.
func TestAddRefusesForeignInterface(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	p := n.Pod("taken")
	h := cnitest.HandleAt(t, p.NetNS)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "eth0"
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "other"}); err != nil {
		t.Fatal(err)
	}
	_, err := n.RT.Add(context.Background(), p)
	if e := cniError(t, err); e.Code != cni.ErrInterfaceExists {
		t.Fatalf("ADD over a foreign eth0: code %d %q", e.Code, e.Msg)
	}
	n.Del(p) // containerd DELs after a failed ADD: the foreign eth0 must survive
	n.AssertClean()
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
	p := n.Pod("a")
	ip := podIP(t, n.Add(p))
	env := map[string]string{"CNI_COMMAND": "DEL", "CNI_CONTAINERID": p.ID, "CNI_NETNS": p.NetNS, "CNI_IFNAME": "eth0", "CNI_PATH": suite.PluginDir}
	out, err := n.execPlugin(t, env, pluginStdin(n.DataDir), setpriv, "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--")
	var e types.Error
	if err == nil || json.Unmarshal(out, &e) != nil || e.Code != cni.ErrDatapathFailure {
		t.Fatalf("DEL without CAP_NET_ADMIN: err %v, out %s; want code %d", err, out, cni.ErrDatapathFailure)
	}
	if v := n.PluginVeths(); len(v) != 1 {
		t.Fatalf("host veths after the failed DEL: %v", v)
	}
	if r := n.Records(); len(r) != 1 || r[0] != ip+" "+p.ID+":eth0" {
		t.Fatalf("IPAM records after the failed DEL: %v, want %s kept for %s", r, ip, p.ID)
	}
	n.Del(p)
	n.AssertClean()
}
