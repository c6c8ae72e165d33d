package probe

import (
	"encoding/binary"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// TCPSegment builds a bare TCP header (no options, no payload) with the
// given flags and a valid checksum, for crafting packets that a normal
// socket never sends (SYN+FIN, for example).
func TCPSegment(src, dst netip.Addr, sport, dport uint16, flags byte) []byte {
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

// SendTCPSegment sends a crafted segment from inside the namespace at nsPath
// (a raw socket: the kernel adds the IP header).
func SendTCPSegment(nsPath string, src, dst netip.Addr, sport, dport uint16, flags byte) error {
	var fd int
	err := netns.Do(nsPath, func() (err error) { fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP); return err })
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Sendto(fd, TCPSegment(src, dst, sport, dport, flags), 0, &unix.SockaddrInet4{Addr: dst.As4()})
}

// TCPSniffer sees every TCP segment that reaches a namespace.
type TCPSniffer struct{ fd int }

// SniffTCP opens a sniffer inside the namespace at nsPath.
func SniffTCP(nsPath string) (*TCPSniffer, error) {
	var fd int
	err := netns.Do(nsPath, func() (err error) { fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP); return err })
	if err != nil {
		return nil, err
	}
	tv := unix.NsecToTimeval(int64(200 * time.Millisecond))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &TCPSniffer{fd: fd}, nil
}

// Saw reports whether a segment from source port sport arrives within wait.
func (s *TCPSniffer) Saw(sport uint16, wait time.Duration) bool {
	buf := make([]byte, 1500)
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if err != nil {
			continue
		}
		ihl := int(buf[0]&0x0f) * 4
		if n >= ihl+4 && binary.BigEndian.Uint16(buf[ihl:]) == sport {
			return true
		}
	}
	return false
}

// Close releases the sniffer.
func (s *TCPSniffer) Close() error { return unix.Close(s.fd) }
