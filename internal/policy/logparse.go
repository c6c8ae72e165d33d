package policy

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// loggedPacket is one packet nfnetlink_log delivered.
type loggedPacket struct {
	prefix  string
	payload []byte // from the network header on
	time    time.Time
}

// parseNflog reads the packets of the messages in b.
func parseNflog(b []byte) []loggedPacket {
	var out []loggedPacket
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			break
		}
		typ := binary.NativeEndian.Uint16(b[4:])
		if typ == unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgPacket && l >= unix.NLMSG_HDRLEN+4 {
			out = append(out, packetAttrs(b[unix.NLMSG_HDRLEN+4:l]))
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return out
}

func packetAttrs(b []byte) loggedPacket {
	p := loggedPacket{time: time.Now()}
	for len(b) >= 4 {
		l, typ := int(binary.NativeEndian.Uint16(b)), binary.NativeEndian.Uint16(b[2:])&^unix.NLA_F_NESTED
		if l < 4 || l > len(b) {
			break
		}
		v := b[4:l]
		switch typ {
		case nfulaPrefix:
			p.prefix = strings.TrimRight(string(v), "\x00")
		case nfulaPayload:
			p.payload = v
		case nfulaTimestamp:
			if len(v) == 16 {
				p.time = time.Unix(int64(binary.BigEndian.Uint64(v)), int64(binary.BigEndian.Uint64(v[8:]))*1000)
			}
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return p
}

var protoNames = map[uint8]string{unix.IPPROTO_TCP: "TCP", unix.IPPROTO_UDP: "UDP", unix.IPPROTO_SCTP: "SCTP",
	unix.IPPROTO_ICMP: "ICMP", unix.IPPROTO_ICMPV6: "ICMPv6"}

// parsePacket reads an IPv4 or IPv6 packet's addresses, protocol and
// ports (IPv6 extension headers are not followed).
func parsePacket(b []byte) (d Denial, src, dst netip.Addr, ok bool) {
	if len(b) < 20 {
		return d, src, dst, false
	}
	var proto uint8
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return d, src, dst, false
		}
		proto, src, dst, l4 = b[9], netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20])), b[ihl:]
	case 6:
		if len(b) < 40 {
			return d, src, dst, false
		}
		proto, src, dst, l4 = b[6], netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40])), b[40:]
	default:
		return d, src, dst, false
	}
	d.Protocol = protoNames[proto]
	if d.Protocol == "" {
		d.Protocol = strconv.Itoa(int(proto))
	}
	d.Src, d.Dst = src.String(), dst.String()
	if (proto == unix.IPPROTO_TCP || proto == unix.IPPROTO_UDP || proto == unix.IPPROTO_SCTP) && len(l4) >= 4 {
		d.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(l4)).String()
		d.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:])).String()
	}
	return d, src, dst, true
}
