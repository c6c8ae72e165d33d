package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"slices"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// selector is a packet field a rule matches on.
type selector struct {
	typ     string // its nft type, for the values it is compared with
	length  uint32 // bytes
	payload *expr.Payload
	meta    expr.MetaKey
	// dep is the check nft puts before a field of a protocol the table's
	// family does not imply (in a bridge table: that the frame carries
	// IPv4 before "ip saddr").
	dep []expr.Any
}

func (s selector) load(reg uint32) expr.Any {
	if s.payload != nil {
		p := *s.payload
		p.DestRegister = reg
		return &p
	}
	return &expr.Meta{Key: s.meta, Register: reg}
}

// selector reads "ip saddr", "ip6 daddr", "meta l4proto", "th dport",
// "iifname", and in a bridge table "meta protocol" and "arp saddr ip".
func (c *compiler) selector() (selector, error) {
	a := c.next()
	switch a {
	case "iifname", "oifname":
		key := expr.MetaKeyIIFNAME
		if a == "oifname" {
			key = expr.MetaKeyOIFNAME
		}
		return selector{typ: "ifname", length: 16, meta: key}, nil
	case "arp":
		return c.arpSelector()
	}
	b := c.next()
	switch a + " " + b {
	case "meta l4proto":
		return selector{typ: "inet_proto", length: 1, meta: expr.MetaKeyL4PROTO}, nil
	case "meta protocol":
		if c.fam != Bridge {
			return selector{}, fmt.Errorf("meta protocol outside a bridge table")
		}
		return selector{typ: "ethertype", length: 2, meta: expr.MetaKeyPROTOCOL}, nil
	case "th dport", "th sport":
		off := uint32(2)
		if b == "sport" {
			off = 0
		}
		return selector{typ: "inet_service", length: 2, payload: &expr.Payload{Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2}}, nil
	case "ip saddr", "ip daddr", "ip6 saddr", "ip6 daddr":
		return c.addrSelector(a, b)
	}
	return selector{}, fmt.Errorf("unsupported field %q", a+" "+b)
}

// addrSelector is "ip saddr" ... of the table's family, or of either in
// a bridge table (behind a check of the frame's protocol, as nft writes).
func (c *compiler) addrSelector(a, b string) (selector, error) {
	fam := c.fam
	var dep []expr.Any
	if c.fam == Bridge {
		fam = IPv4
		if a == "ip6" {
			fam = IPv6
		}
		dep = []expr.Any{&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, ethertypes[a])}}
	} else if a != c.fam.IP() {
		return selector{}, fmt.Errorf("%s %s in a table of family %s", a, b, c.fam.IP())
	}
	n := fam.addrLen()
	off := uint32(12) // IPv4 source
	if fam == IPv6 {
		off = 8
	}
	if b == "daddr" {
		off += n
	}
	return selector{typ: fam.AddrType(), length: n, payload: &expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}, dep: dep}, nil
}

// arpSelector is "arp saddr ip" or "arp daddr ip" in a bridge table: the
// sender's or target's protocol address of an Ethernet/IPv4 ARP packet,
// behind nft's check of the frame's ether type.
func (c *compiler) arpSelector() (selector, error) {
	if c.fam != Bridge {
		return selector{}, fmt.Errorf("arp outside a bridge table")
	}
	off := uint32(14) // sender protocol address
	switch w := c.next(); w {
	case "saddr":
	case "daddr":
		off = 24
	default:
		return selector{}, fmt.Errorf("arp %s", w)
	}
	if err := c.expect("ip"); err != nil {
		return selector{}, err
	}
	dep := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, unix.ETH_P_ARP)}}
	return selector{typ: "ipv4_addr", length: 4, payload: &expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4}, dep: dep}, nil
}

// selectors reads one selector or a concatenation "A . B . C".
func (c *compiler) selectors() ([]selector, error) {
	var out []selector
	for {
		s, err := c.selector()
		if err != nil {
			return nil, err
		}
		out = append(out, s)
		if c.peek(0) != "." {
			return out, nil
		}
		c.next()
	}
}

// load puts the fields in registers as nft does: the checks their
// protocols need first, then the first field in register 1, each next one
// in the 32-bit register after the previous field.
func (c *compiler) load(sels []selector) {
	c.deps(sels)
	var words uint32
	for _, s := range sels {
		c.emit(s.load(register(words)))
		words += (s.length + 3) / 4
	}
}

// deps emits the protocol checks of the fields, each once in a rule.
func (c *compiler) deps(sels []selector) {
	for _, s := range sels {
		if len(s.dep) > 0 && !slices.ContainsFunc(c.depsDone, func(d []expr.Any) bool { return reflect.DeepEqual(d, s.dep) }) {
			c.emit(s.dep...)
			c.depsDone = append(c.depsDone, s.dep)
		}
	}
}

// register is the register nft names for the data at 32-bit word w of
// the register file: a 16-byte register (1-4) where one starts, a 32-bit
// one (NFT_REG32_00 is 8) otherwise.
func register(w uint32) uint32 {
	if w%4 == 0 {
		return w/4 + 1
	}
	return 8 + w
}

// match: fields, then "@set", "vmap @map", or (one field) a value, a
// prefix, or "!=" one of those.
func (c *compiler) match() error {
	sels, err := c.selectors()
	if err != nil {
		return err
	}
	switch t := c.peek(0); {
	case t == "vmap":
		c.next()
		m, err := c.setRef()
		if err != nil {
			return err
		}
		c.load(sels)
		c.emit(&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: m})
		return nil
	case t == "@" || len(t) > 1 && t[0] == '@':
		set, _ := c.setRef()
		c.load(sels)
		c.emit(&expr.Lookup{SourceRegister: 1, SetName: set})
		return nil
	case len(sels) > 1:
		return fmt.Errorf("a concatenation compared with %q", t)
	}
	op := expr.CmpOpEq
	if c.peek(0) == "!=" {
		c.next()
		op = expr.CmpOpNeq
	}
	return c.compare(sels[0], op, c.next())
}

// compare matches field s against value v: an address, a prefix (nft
// loads only the bytes a byte-aligned prefix covers, and masks otherwise),
// a protocol or a port.
func (c *compiler) compare(s selector, op expr.CmpOp, v string) error {
	switch s.typ {
	case "ipv4_addr", "ipv6_addr":
		p, err := netip.ParsePrefix(v)
		if err != nil {
			a, aerr := netip.ParseAddr(v)
			if aerr != nil {
				return fmt.Errorf("address %q", v)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Unmap().Is4() != (s.typ == "ipv4_addr") {
			return fmt.Errorf("prefix %q compared with a field of type %s", v, s.typ)
		}
		addr := p.Masked().Addr().Unmap().AsSlice()
		if p.Bits()%8 == 0 && p.Bits() > 0 {
			n := uint32(p.Bits() / 8)
			pl := *s.payload
			pl.Len, pl.DestRegister = n, 1
			c.deps([]selector{s})
			c.emit(&pl, &expr.Cmp{Op: op, Register: 1, Data: addr[:n]})
			return nil
		}
		mask := netip.PrefixFrom(p.Addr().Unmap(), p.Bits())
		c.deps([]selector{s})
		c.emit(s.load(1), &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: s.length, Mask: prefixMask(mask), Xor: make([]byte, s.length)},
			&expr.Cmp{Op: op, Register: 1, Data: addr})
		return nil
	default:
		b, err := encodeField(s.typ, v)
		if err != nil {
			return err
		}
		c.deps([]selector{s})
		c.emit(s.load(1), &expr.Cmp{Op: op, Register: 1, Data: b})
		return nil
	}
}

func prefixMask(p netip.Prefix) []byte {
	out := make([]byte, p.Addr().BitLen()/8)
	for i := range p.Bits() {
		out[i/8] |= 0x80 >> (i % 8)
	}
	return out
}
