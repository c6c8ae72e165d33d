package policy

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// nflogMessage is a packet as nfnetlink_log sends it: netlink header,
// nfgenmsg, the prefix and payload attributes.
func nflogMessage(prefix string, payload []byte) []byte {
	attr := func(b []byte, typ uint16, v []byte) []byte {
		b = binary.NativeEndian.AppendUint16(b, uint16(4+len(v)))
		b = binary.NativeEndian.AppendUint16(b, typ)
		b = append(b, v...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	body := attr(nil, nfulaPrefix, append([]byte(prefix), 0))
	body = attr(body, nfulaPayload, payload)
	msg := make([]byte, 16)
	binary.NativeEndian.PutUint16(msg[4:], unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgPacket)
	msg = append(msg, unix.AF_INET, 0, 0x46, 0x4e)
	msg = append(msg, body...)
	binary.NativeEndian.PutUint32(msg, uint32(len(msg)))
	return msg
}

// tcpSYN is the IPv4 header and first bytes of a TCP SYN.
func tcpSYN(src, dst netip.Addr, sport, dport uint16) []byte {
	b := make([]byte, 20, 40)
	b[0], b[9] = 0x45, unix.IPPROTO_TCP
	copy(b[12:], src.AsSlice())
	copy(b[16:], dst.AsSlice())
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

// A logged packet is read and named: its pods from the model, and the
// policies that isolate the pod judged in its direction; the log keeps
// the last LogSize, oldest first.
func TestLogNamesDenials(t *testing.T) {
	client, server := netip.MustParseAddr("10.244.2.7"), netip.MustParseAddr("10.244.1.5")
	e := &Engine{}
	e.model.Store(&Model{Family: nft.IPv4, Names: map[netip.Addr]string{client: "y/client", server: "x/server"},
		Ingress: Direction{Policies: map[netip.Addr][]string{server: {"x/deny", "x/web"}}}})
	l := NewLog([]*Engine{e}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	b := append(nflogMessage("flatnet:ingress", tcpSYN(client, server, 40000, 80)), nflogMessage("other", nil)...)
	pkts := parseNflog(b)
	if len(pkts) != 2 {
		t.Fatalf("%d packets read, want 2", len(pkts))
	}
	d, ok := l.name(pkts[0])
	if !ok || d.SrcPod != "y/client" || d.DstPod != "x/server" || d.Src != "10.244.2.7:40000" || d.Dst != "10.244.1.5:80" ||
		d.Protocol != "TCP" || d.Direction != "ingress" || !slices.Equal(d.Policies, []string{"x/deny", "x/web"}) {
		t.Errorf("named %+v %v", d, ok)
	}
	if _, ok := l.name(pkts[1]); ok {
		t.Error("a packet of another prefix was named")
	}
	for i := range LogSize + 5 {
		d.Protocol = string(rune('a' + i%26))
		l.keep(d)
	}
	got := l.Recent()
	if len(got) != LogSize || got[0].Protocol != string(rune('a'+5%26)) || got[LogSize-1].Protocol != string(rune('a'+(LogSize+4)%26)) {
		t.Errorf("kept %d, first %q, last %q", len(got), got[0].Protocol, got[len(got)-1].Protocol)
	}
}
