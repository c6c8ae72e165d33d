package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"
)

// ElementOp is one element of a set or map, as nft writes it: the key
// (and a map's value, or a verdict map's verdict such as "goto lb-2"), one
// string per field of a concatenation.
type ElementOp struct {
	Delete  bool
	Set     string
	Key     []string
	Value   []string
	Comment string
}

// A set's type, as nft declares it ("ipv4_addr . inet_proto .
// inet_service : verdict"), and as the kernel keeps it: nft's number of
// each datatype (6 bits a field in a concatenation), the key length (each
// field of a concatenation padded to 4 bytes, the kernel's registers) and
// the byte order nft records in the set's user data.
type datatype struct {
	id, size, order uint32
}

var datatypes = map[string]datatype{
	"integer":      {4, 4, 1},
	"ipv4_addr":    {7, 4, 2},
	"ipv6_addr":    {8, 16, 2},
	"inet_proto":   {12, 1, 2},
	"inet_service": {13, 2, 2},
	"mark":         {19, 4, 1},
	"ifname":       {41, 16, 1}, // an interface name, NUL-padded to IFNAMSIZ
	"ethertype":    {10, 2, 2},
}

// setDecl is what encoding a set's elements needs of its declaration: its
// type, and whether it holds intervals (then each element carries its end
// key too, as nft sends it for a concatenation of ranges).
type setDecl struct {
	typ      string
	interval bool
}

func declOf(typ string, flags []knftables.SetFlag) setDecl {
	return setDecl{typ: typ, interval: slices.Contains(flags, knftables.IntervalFlag)}
}

type setType struct {
	magic, size, order uint32
	fields             []uint32 // each field's length, unpadded
	counter            bool     // the data of a map of named counters
}

// parseSetType reads "KEY [: DATA]".
func parseSetType(typ string) (key, data setType, isMap bool, err error) {
	k, d, isMap := strings.Cut(typ, " : ")
	if key, err = parseFields(k); err != nil || !isMap {
		return key, data, isMap, err
	}
	switch d {
	case "verdict":
		return key, setType{magic: unix.NFT_DATA_VERDICT}, true, nil
	case "counter":
		return key, setType{counter: true}, true, nil
	}
	data, err = parseFields(d)
	return key, data, true, err
}

func parseFields(s string) (setType, error) {
	var t setType
	names := strings.Split(s, " . ")
	for _, n := range names {
		dt, ok := datatypes[n]
		if !ok {
			return t, fmt.Errorf("type %q is not supported", n)
		}
		t.magic = t.magic<<6 | dt.id
		t.order = dt.order
		t.fields = append(t.fields, dt.size)
		if len(names) > 1 {
			t.size += (dt.size + 3) &^ 3
		} else {
			t.size = dt.size
		}
	}
	return t, nil
}

// typeName is the nft name of the type the kernel keeps as magic (a
// concatenation of nft datatypes), "" for one this package does not know.
func typeName(magic uint32) string {
	if magic == unix.NFT_DATA_VERDICT {
		return "verdict"
	}
	var names []string
	for ; magic != 0; magic >>= 6 {
		id := magic & 63
		name := ""
		for n, dt := range datatypes {
			if dt.id == id {
				name = n
			}
		}
		if name == "" {
			return ""
		}
		names = append([]string{name}, names...)
	}
	return strings.Join(names, " . ")
}

// encodeFields encodes the fields of a key or value: in a concatenation
// each field takes a multiple of 4 bytes (the kernel's registers).
func encodeFields(types, vals []string) ([]byte, error) {
	if len(types) != len(vals) {
		return nil, fmt.Errorf("%d fields for type %s", len(vals), strings.Join(types, " . "))
	}
	var out []byte
	for i, t := range types {
		b, err := encodeField(t, vals[i])
		if err != nil {
			return nil, err
		}
		if len(types) > 1 {
			for len(b)%4 != 0 {
				b = append(b, 0)
			}
		}
		out = append(out, b...)
	}
	return out, nil
}

// encodeRanges encodes the key of an element of an interval set: each
// field a value, a prefix ("10.1.0.0/16") or a range ("10.2.0.1-10.2.0.7",
// "80-90"), as the start key and the end key (inclusive).
func encodeRanges(types, vals []string) (start, end []byte, err error) {
	if len(types) != len(vals) {
		return nil, nil, fmt.Errorf("%d fields for type %s", len(vals), strings.Join(types, " . "))
	}
	lo, hi := make([]string, len(vals)), make([]string, len(vals))
	for i, v := range vals {
		if lo[i], hi[i], err = fieldRange(types[i], v); err != nil {
			return nil, nil, err
		}
	}
	if start, err = encodeFields(types, lo); err != nil {
		return nil, nil, err
	}
	if end, err = encodeFields(types, hi); err != nil {
		return nil, nil, err
	}
	return start, end, nil
}

// fieldRange splits one field of an interval key into its first and last
// value.
func fieldRange(typ, v string) (lo, hi string, err error) {
	if typ == "ipv4_addr" || typ == "ipv6_addr" {
		if p, perr := netip.ParsePrefix(v); perr == nil {
			if p.Masked() != p {
				return "", "", fmt.Errorf("prefix %q has host bits", v)
			}
			return p.Addr().String(), lastAddr(p).String(), nil
		}
	}
	a, b, ok := strings.Cut(v, "-")
	if !ok {
		return v, v, nil
	}
	return a, b, nil
}

// lastAddr is the last address of prefix p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

var ethertypes = map[string]uint16{"ip": unix.ETH_P_IP, "ip6": unix.ETH_P_IPV6, "arp": unix.ETH_P_ARP}

var protocols = map[string]byte{"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}

func encodeField(typ, val string) ([]byte, error) {
	switch typ {
	case "ipv4_addr", "ipv6_addr":
		a, err := netip.ParseAddr(val)
		if err != nil || a.Zone() != "" || a.Is4() != (typ == "ipv4_addr") {
			return nil, fmt.Errorf("%q is not an %s", val, typ)
		}
		return a.AsSlice(), nil
	case "inet_proto":
		p, ok := protocols[val]
		if !ok {
			return nil, fmt.Errorf("protocol %q", val)
		}
		return []byte{p}, nil
	case "integer", "mark":
		v, err := strconv.ParseUint(val, 0, 32)
		if err != nil {
			return nil, fmt.Errorf("%s %q", typ, val)
		}
		return binary.NativeEndian.AppendUint32(nil, uint32(v)), nil
	case "ethertype":
		t, ok := ethertypes[val]
		if !ok {
			return nil, fmt.Errorf("ether type %q", val)
		}
		return binary.BigEndian.AppendUint16(nil, t), nil
	case "ifname":
		if len(val) == 0 || len(val) >= 16 {
			return nil, fmt.Errorf("interface name %q", val)
		}
		return append([]byte(val), make([]byte, 16-len(val))...), nil
	case "inet_service":
		port, err := strconv.ParseUint(val, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("port %q", val)
		}
		return binary.BigEndian.AppendUint16(nil, uint16(port)), nil
	}
	return nil, fmt.Errorf("type %s is not supported over netlink", typ)
}

func verdict(v string) (*expr.Verdict, error) {
	kind, chain, _ := strings.Cut(v, " ")
	switch kind {
	case "goto":
		return &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain}, nil
	case "jump":
		return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain}, nil
	case "drop":
		return &expr.Verdict{Kind: expr.VerdictDrop}, nil
	case "accept":
		return &expr.Verdict{Kind: expr.VerdictAccept}, nil
	case "return":
		return &expr.Verdict{Kind: expr.VerdictReturn}, nil
	}
	return nil, fmt.Errorf("verdict %q", v)
}
