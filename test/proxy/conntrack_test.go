package proxy_test

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/probe"
)

// Deleting a Service clears its UDP conntrack entries: a socket that talked
// to it reaches the new backend when the Service comes back with another.
func TestUDPConntrackClearedOnServiceDeletion(t *testing.T) {
	e := newEnv(t, "")
	a, b, client := e.addPod("a"), e.addPod("b"), e.addPod("client")
	e.proxier.UpdateService(svc("gone", "10.96.0.110"))
	e.proxier.UpdateSlice(slice("gone", readyOn(a, "node-1")))
	e.sync()
	conn, err := probe.Dial(client.ns, "udp", "10.96.0.110:81", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ask := func() string {
		buf := make([]byte, 256)
		for range 3 {
			_ = conn.SetDeadline(time.Now().Add(500 * time.Millisecond))
			if _, err := conn.Write([]byte("x")); err != nil {
				continue
			}
			if n, err := conn.Read(buf); err == nil {
				return backendOf(string(buf[:n]))
			}
		}
		return ""
	}
	if got := ask(); got != "a" {
		t.Fatalf("first answer from %q", got)
	}
	e.proxier.DeleteService(svc("gone", "10.96.0.110"))
	e.sync()
	if got := ask(); got != "" { // a stale entry would still carry the flow to a
		t.Fatalf("after the Service was deleted the socket still reached %q", got)
	}
	e.proxier.UpdateService(svc("gone", "10.96.0.110"))
	e.proxier.UpdateSlice(slice("gone", readyOn(b, "node-1")))
	e.sync()
	if got := ask(); got != "b" {
		t.Fatalf("after the Service was deleted and re-created on b, the socket reached %q", got)
	}
}

// Packets conntrack finds INVALID (here a TCP segment with SYN and FIN) are
// dropped at the node instead of being forwarded to a pod.
func TestInvalidPacketsDropped(t *testing.T) {
	e := newEnv(t, "")
	a, client := e.addPod("a"), e.addPod("client")
	e.proxier.UpdateService(svc("web", "10.96.0.120"))
	e.proxier.UpdateSlice(slice("web", readyOn(a, "node-1")))
	e.sync()
	// a's raw TCP socket sees every TCP segment that reaches a.
	var sniff int
	if err := netns.Do(a.ns, func() (err error) { sniff, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP); return err }); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sniff)
	tv := unix.NsecToTimeval(int64(300 * time.Millisecond))
	_ = unix.SetsockoptTimeval(sniff, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	var raw int
	if err := netns.Do(client.ns, func() (err error) { raw, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP); return err }); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(raw)
	src, dst := netip.MustParseAddr(client.ip), netip.MustParseAddr(a.ip)
	send := func(srcPort uint16, flags byte) {
		seg := tcpSegment(src, dst, srcPort, 8080, flags)
		if err := unix.Sendto(raw, seg, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
			t.Fatal(err)
		}
	}
	seen := func(srcPort uint16) bool {
		buf := make([]byte, 1500)
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			n, _, err := unix.Recvfrom(sniff, buf, 0)
			if err != nil {
				continue
			}
			ihl := int(buf[0]&0x0f) * 4
			if n >= ihl+4 && binary.BigEndian.Uint16(buf[ihl:]) == srcPort {
				return true
			}
		}
		return false
	}
	send(40001, 0x02) // a plain SYN: forwarded (the method works)
	if !seen(40001) {
		t.Fatal("a plain SYN from the client pod did not reach the backend pod")
	}
	send(40002, 0x03) // SYN+FIN: INVALID for conntrack
	if seen(40002) {
		t.Fatal("a SYN+FIN segment (conntrack INVALID) was forwarded to the pod")
	}
}

// tcpSegment builds a TCP header (no options, no payload) with its checksum.
func tcpSegment(src, dst netip.Addr, sport, dport uint16, flags byte) []byte {
	h := make([]byte, 20)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint32(h[4:], 1000)
	h[12] = 5 << 4
	h[13] = flags
	binary.BigEndian.PutUint16(h[14:], 65535)
	pseudo := append(append(append(src.AsSlice(), dst.AsSlice()...), 0, unix.IPPROTO_TCP, 0, 20), h...)
	var sum uint32
	for i := 0; i+1 < len(pseudo); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(pseudo[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(h[16:], ^uint16(sum))
	return h
}
