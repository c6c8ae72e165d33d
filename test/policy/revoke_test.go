package policy_test

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/netns"
)

// An established TCP connection and a UDP flow from y/client to x/server
// carry data; a policy then denies them. With revocation (flatnetd's
// default) the next packet of each goes unanswered; without it both go on
// as if no policy had changed (the forward chain judges first packets
// only).
func TestPolicyChangeCutsEstablishedFlows(t *testing.T) {
	for _, revoke := range []bool{true, false} {
		n := newNode(t)
		n.revoke = revoke
		n.startAgent()
		rt := n.runtime(n.admitting(""))
		client, server := n.newPod("y", "client"), n.newPod("x", "server")
		add(t, rt, client)
		ips := add(t, rt, server)
		echo(t, server)
		var conns []net.Conn
		for _, ip := range ips {
			for _, proto := range []string{"tcp", "udp"} {
				c := dial(t, client, proto, ip)
				if !roundTrip(c) {
					t.Fatalf("%s to %s: no echo before any policy", proto, ip)
				}
				conns = append(conns, c)
			}
		}
		n.cluster.set(func(c *policyCluster) { c.Policies = []*networkingv1.NetworkPolicy{denyIngress("x")} })
		commit(t, n)
		for _, c := range conns {
			if got := roundTrip(c); got == revoke {
				t.Errorf("revocation %v: %s %s -> %s after the deny: echoed %v", revoke, c.LocalAddr().Network(), c.LocalAddr(), c.RemoteAddr(), got)
			}
		}
	}
}

// echo echoes TCP and UDP on port 80 in the pod until the test ends.
func echo(t *testing.T, p cniruntime.Pod) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := netns.Do(p.NetNS, func() (err error) {
		if ln, err = net.Listen("tcp", ":80"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", ":80")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], addr)
		}
	}()
}

func dial(t *testing.T, p cniruntime.Pod, proto string, ip netip.Addr) net.Conn {
	t.Helper()
	var c net.Conn
	if err := netns.Do(p.NetNS, func() (err error) {
		c, err = net.DialTimeout(proto, netip.AddrPortFrom(ip, 80).String(), time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip reports whether a byte sent on c comes back within a second.
func roundTrip(c net.Conn) bool {
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		return false
	}
	buf := make([]byte, 1)
	_, err := io.ReadFull(c, buf)
	return err == nil
}
