package policy_test

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/netns"
)

// A pod sending with another pod's address, over IPv4 and IPv6, is
// dropped at the bridge when its port is in the agent's record (attached
// by a plugin that asked the agent); its own address passes. A pod
// attached without the policy section is not checked, and its forged
// packets arrive: the test would see them.
func TestForgedSourceIsDropped(t *testing.T) {
	n := newNode(t)
	n.startAgent()
	admitting, plain := n.runtime(n.admitting("")), n.runtime("")
	victim, other := n.newPod("y", "victim"), n.newPod("y", "other")
	victimIPs, otherIPs := add(t, admitting, victim), add(t, admitting, other)
	seen := recordSources(t, victim)
	for _, c := range []struct {
		name   string
		rt     *cniruntime.Runtime
		forged bool // arrives
	}{{"admitted", admitting, false}, {"plain", plain, true}} {
		evil := n.newPod("x", "evil-"+c.name)
		own := add(t, c.rt, evil)
		for i, dst := range victimIPs {
			send(t, evil, netip.Addr{}, dst)
			if !seen.wait(own[i]) {
				t.Errorf("%s: x/evil's own %s did not reach %s", c.name, own[i], dst)
			}
			forged := otherIPs[i]
			addAddr(t, evil, forged)
			send(t, evil, forged, dst)
			if got := seen.wait(forged); got != c.forged {
				t.Errorf("%s: a datagram from x/evil forging %s reached %s: %v, want %v", c.name, forged, dst, got, c.forged)
			}
			delAddr(t, evil, forged)
		}
	}
	got := n.samples(t)
	for _, p := range []string{"ip", "ip6"} {
		if c := got["flatnet_policy_spoofed_packets_total{protocol="+p+"}"]; c < 3 {
			t.Errorf("%s: %v spoofed packets counted, want the 3 sent at least", p, c)
		}
	}
}

// sources records the source addresses of UDP datagrams to port 80.
type sources struct {
	mu   sync.Mutex
	seen map[netip.Addr]bool
}

func recordSources(t *testing.T, p cniruntime.Pod) *sources {
	t.Helper()
	var pc net.PacketConn
	if err := netns.Do(p.NetNS, func() (err error) { pc, err = net.ListenPacket("udp", ":80"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	s := &sources{seen: map[netip.Addr]bool{}}
	go func() {
		buf := make([]byte, 64)
		for {
			_, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.seen[addr.(*net.UDPAddr).AddrPort().Addr().Unmap()] = true
			s.mu.Unlock()
		}
	}()
	return s
}

// wait reports whether a datagram from src arrives within a second.
func (s *sources) wait(src netip.Addr) bool {
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		s.mu.Lock()
		ok := s.seen[src]
		s.mu.Unlock()
		if ok {
			return true
		}
	}
	return false
}

// send sends a few datagrams from pod p to dst:80, from address src (the
// kernel's choice when invalid).
func send(t *testing.T, p cniruntime.Pod, src, dst netip.Addr) {
	t.Helper()
	err := netns.Do(p.NetNS, func() error {
		var laddr *net.UDPAddr
		if src.IsValid() {
			laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		}
		c, err := net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 80)))
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 {
			if _, err := c.Write([]byte("x")); err != nil && !errors.Is(err, unix.ECONNREFUSED) {
				return err // refused: no one listens, which is no matter
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func podAddr(t *testing.T, p cniruntime.Pod, a netip.Addr) (*netlink.Handle, netlink.Link, *netlink.Addr) {
	t.Helper()
	h, err := netns.Handle(p.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	na, err := netlink.ParseAddr(netip.PrefixFrom(a, a.BitLen()).String())
	if err != nil {
		t.Fatal(err)
	}
	na.Flags = unix.IFA_F_NODAD
	return h, l, na
}

// addAddr gives pod p address a too (its process can then send from it).
func addAddr(t *testing.T, p cniruntime.Pod, a netip.Addr) {
	t.Helper()
	h, l, na := podAddr(t, p, a)
	defer h.Close()
	if err := h.AddrAdd(l, na); err != nil {
		t.Fatal(err)
	}
}

func delAddr(t *testing.T, p cniruntime.Pod, a netip.Addr) {
	t.Helper()
	h, l, na := podAddr(t, p, a)
	defer h.Close()
	if err := h.AddrDel(l, na); err != nil {
		t.Fatal(err)
	}
}

// A pod announcing another pod's IPv4 address as its own (gratuitous ARP)
// moves that address to its MAC in its neighbours' caches, unless its
// port is guarded: then the announcement is dropped at the bridge.
func TestForgedARPIsDropped(t *testing.T) {
	n := newNode(t)
	n.startAgent()
	admitting, plain := n.runtime(n.admitting("")), n.runtime("")
	victim, other := n.newPod("y", "victim"), n.newPod("y", "other")
	add(t, admitting, victim)
	otherIP := add(t, admitting, other)[0]
	for _, c := range []struct {
		name  string
		rt    *cniruntime.Runtime
		moved bool
	}{{"admitted", admitting, false}, {"plain", plain, true}} {
		evil := n.newPod("x", "evil-"+c.name)
		add(t, c.rt, evil)
		send(t, victim, netip.Addr{}, otherIP) // victim learns other's MAC
		otherMAC := neighbour(t, victim, otherIP)
		if otherMAC == "" {
			t.Fatalf("%s: y/victim has no neighbour entry for %s", c.name, otherIP)
		}
		evilMAC := announce(t, evil, otherIP)
		time.Sleep(300 * time.Millisecond)
		if got := neighbour(t, victim, otherIP); (got == evilMAC) != c.moved {
			t.Errorf("%s: after x/evil (%s) announced %s, y/victim has it at %s (other is %s)", c.name, evilMAC, otherIP, got, otherMAC)
		}
		// put it back for the next case
		h, err := netns.Handle(victim.NetNS)
		if err != nil {
			t.Fatal(err)
		}
		_ = h.NeighDel(&netlink.Neigh{LinkIndex: link(t, h).Attrs().Index, IP: otherIP.AsSlice()})
		h.Close()
	}
	if c := n.samples(t)["flatnet_policy_spoofed_packets_total{protocol=arp}"]; c < 2 {
		t.Errorf("%v spoofed ARP packets counted, want the 2 sent at least", c)
	}
}

func link(t *testing.T, h *netlink.Handle) netlink.Link {
	t.Helper()
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// neighbour is the MAC pod p's neighbour cache holds for ip ("" for none).
func neighbour(t *testing.T, p cniruntime.Pod, ip netip.Addr) string {
	t.Helper()
	h, err := netns.Handle(p.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	neighs, err := h.NeighList(link(t, h).Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, ne := range neighs {
		if a, ok := netip.AddrFromSlice(ne.IP); ok && a.Unmap() == ip && ne.HardwareAddr != nil {
			return ne.HardwareAddr.String()
		}
	}
	return ""
}

// announce broadcasts a gratuitous ARP from pod p claiming ip; it returns
// p's MAC.
func announce(t *testing.T, p cniruntime.Pod, ip netip.Addr) string {
	t.Helper()
	h, err := netns.Handle(p.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l := link(t, h)
	mac := l.Attrs().HardwareAddr
	bcast := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	frame := append(append(append([]byte{}, bcast...), mac...), 0x08, 0x06) // Ethernet: broadcast, from p, ARP
	frame = append(frame, 0, 1, 8, 0, 6, 4, 0, 1)                           // Ethernet/IPv4, request
	frame = append(append(frame, mac...), ip.AsSlice()...)                  // sender: p's MAC, the claimed address
	frame = append(append(frame, make([]byte, 6)...), ip.AsSlice()...)      // target: the same address (gratuitous)
	err = netns.Do(p.NetNS, func() error {
		proto := uint16(unix.ETH_P_ARP<<8&0xff00 | unix.ETH_P_ARP>>8)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(proto))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Protocol: proto, Ifindex: l.Attrs().Index, Halen: 6}
		copy(sa.Addr[:], bcast)
		for range 2 {
			if err := unix.Sendto(fd, frame, 0, sa); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return mac.String()
}
