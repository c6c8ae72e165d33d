// Package probe sends test traffic from inside a network namespace: ICMP
// echo (so the project needs no ping binary) and TCP connects.
//
// A socket belongs to the namespace it was created in, whatever thread uses
// it later: each probe creates its socket inside the namespace (package
// netns's Do) and then works from the ordinary Go runtime.
package probe

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// Ping sends one ICMP echo request from the namespace at nsPath to dst and
// waits up to timeout for the reply. It returns the round-trip time.
func Ping(nsPath string, dst netip.Addr, timeout time.Duration) (time.Duration, error) {
	if !dst.Is4() {
		return 0, fmt.Errorf("ping %s: only IPv4 is supported", dst)
	}
	var conn *icmp.PacketConn
	err := netns.Do(nsPath, func() (err error) {
		conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("open ICMP socket in %s: %w", nsPath, err)
	}
	defer conn.Close()

	id := os.Getpid() & 0xffff
	seq := int(time.Now().UnixNano() & 0xffff)
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("flatnet")}}
	wire, err := msg.Marshal(nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := conn.WriteTo(wire, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return 0, fmt.Errorf("ping %s: %w", dst, err)
	}
	deadline := start.Add(timeout)
	if err := conn.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	buf := make([]byte, 1500)
	for {
		n, peer, err := conn.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return 0, fmt.Errorf("ping %s: no reply within %s", dst, timeout)
			}
			return 0, fmt.Errorf("ping %s: %w", dst, err)
		}
		reply, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || reply.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		echo, ok := reply.Body.(*icmp.Echo)
		if ok && echo.ID == id && echo.Seq == seq && peer.String() == dst.String() {
			return time.Since(start), nil
		}
	}
}
