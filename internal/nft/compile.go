package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Rules are written in nft's syntax (knftables.Rule), and committed as the
// kernel expressions nft would compile them to: this file is that compiler,
// for the part of the language the engines speak. Anything else is an
// error naming the token, never a guess. kernel_test.go loads every form
// both ways, through nft and through this compiler, and requires the
// kernel to hold the same expressions (`nft --debug=netlink list table`).
//
// Registers follow nft: a lone value or the first field of a concatenation
// in register 1 (16 bytes), each further field in the next 32-bit register
// after the previous one (NFT_REG32_00 is 8), so "ip daddr . meta l4proto
// . th dport" uses registers 1, 9 and 10.

// anonSet is a constant anonymous map a rule brings along (numgen ...
// vmap { 0 : goto a, 1 : goto b }): created in the same batch, before the
// rule, and referred to by its batch id.
type anonSet struct {
	id       uint32
	keyType  string
	elements []ElementOp
}

// compiled is one rule in kernel expressions: google/nftables' (expr.Any),
// or those it lacks (*objrefMap), encoded by this package.
type compiled struct {
	exprs []any
	anon  []anonSet
}

type compiler struct {
	fam      Family
	toks     []string
	i        int
	out      compiled
	nextID   func() uint32
	depsDone [][]expr.Any // the protocol checks the rule has made
}

// compileRule compiles rule (nft syntax) for a table of family fam.
// nextID hands out batch ids for the anonymous maps it needs.
func compileRule(fam Family, rule string, nextID func() uint32) (compiled, error) {
	c := &compiler{fam: fam, toks: strings.Fields(rule), nextID: nextID}
	for c.i < len(c.toks) {
		if err := c.statement(); err != nil {
			return compiled{}, fmt.Errorf("rule %q: %w", rule, err)
		}
	}
	return c.out, nil
}

func (c *compiler) peek(n int) string {
	if c.i+n < len(c.toks) {
		return c.toks[c.i+n]
	}
	return ""
}

func (c *compiler) next() string {
	t := c.peek(0)
	c.i++
	return t
}

func (c *compiler) expect(words ...string) error {
	for _, w := range words {
		if t := c.next(); t != w {
			return fmt.Errorf("expected %q, found %q", w, t)
		}
	}
	return nil
}

func (c *compiler) emit(e ...expr.Any) {
	for _, x := range e {
		c.out.exprs = append(c.out.exprs, x)
	}
}

func (c *compiler) statement() error {
	switch t := c.peek(0); t {
	case "ct":
		return c.ct()
	case "fib":
		return c.fib()
	case "numgen":
		return c.numgen()
	case "meta":
		if c.peek(1) == "mark" {
			return c.mark()
		}
		return c.match()
	case "ip", "ip6", "th", "iifname", "oifname", "arp":
		return c.match()
	case "icmpv6":
		return c.icmpv6()
	case "update":
		return c.update()
	case "counter":
		return c.counter()
	case "log":
		return c.log()
	case "limit":
		return c.limit()
	case "jump", "goto", "return", "drop", "accept":
		return c.verdict()
	case "masquerade":
		c.next()
		m := &expr.Masq{}
		if c.peek(0) == "fully-random" {
			c.next()
			m.FullyRandom = true
		}
		c.emit(m)
		return nil
	case "reject":
		return c.reject()
	case "dnat":
		return c.dnat()
	default:
		return fmt.Errorf("unsupported statement at %q", t)
	}
}

func (c *compiler) verdict() error {
	v, err := verdict(c.next() + " " + c.peek(0))
	if err != nil {
		return err
	}
	if v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto {
		if c.next() == "" {
			return fmt.Errorf("%s without a chain", c.toks[c.i-2])
		}
	}
	c.emit(v)
	return nil
}

var ctStates = map[string]uint32{"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}
var ctStatus = map[string]uint32{"expected": 1, "seen-reply": 2, "assured": 4, "confirmed": 8, "snat": 16, "dnat": 32, "dying": 512}

// ct: "ct state new,established" or "ct status dnat": the bits set.
func (c *compiler) ct() error {
	c.next()
	key, names := expr.CtKeySTATE, ctStates
	switch k := c.next(); k {
	case "state":
	case "status":
		key, names = expr.CtKeySTATUS, ctStatus
	default:
		return fmt.Errorf("ct %s", k)
	}
	var mask uint32
	for _, n := range strings.Split(c.next(), ",") {
		bit, ok := names[n]
		if !ok {
			return fmt.Errorf("ct value %q", n)
		}
		mask |= bit
	}
	c.emit(&expr.Ct{Register: 1, Key: key},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(mask), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0)})
	return nil
}

var icmpv6Types = map[string]byte{"echo-request": 128, "echo-reply": 129, "nd-router-solicit": 133,
	"nd-router-advert": 134, "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136}

// icmpv6: "icmpv6 type nd-neighbor-solicit", with the protocol check nft
// puts before it.
func (c *compiler) icmpv6() error {
	if err := c.expect("icmpv6", "type"); err != nil {
		return err
	}
	t, ok := icmpv6Types[c.next()]
	if !ok {
		return fmt.Errorf("icmpv6 type %q", c.toks[c.i-1])
	}
	c.emit(&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{t}})
	return nil
}

// fib: "fib saddr|daddr type local".
func (c *compiler) fib() error {
	c.next()
	f := &expr.Fib{Register: 1, ResultADDRTYPE: true}
	switch a := c.next(); a {
	case "saddr":
		f.FlagSADDR = true
	case "daddr":
		f.FlagDADDR = true
	default:
		return fmt.Errorf("fib %s", a)
	}
	if err := c.expect("type", "local"); err != nil {
		return err
	}
	c.emit(f, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(unix.RTN_LOCAL)})
	return nil
}

// numgen: "numgen random mod N == K" or "numgen random mod N vmap { K : verdict , ... }".
func (c *compiler) numgen() error {
	if err := c.expect("numgen", "random", "mod"); err != nil {
		return err
	}
	n, err := strconv.ParseUint(c.next(), 10, 32)
	if err != nil || n == 0 {
		return fmt.Errorf("numgen modulus %q", c.toks[c.i-1])
	}
	c.emit(&expr.Numgen{Register: 1, Modulus: uint32(n), Type: unix.NFT_NG_RANDOM})
	switch t := c.next(); t {
	case "==":
		k, err := strconv.ParseUint(c.next(), 10, 32)
		if err != nil {
			return fmt.Errorf("numgen value %q", c.toks[c.i-1])
		}
		c.emit(&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(uint32(k))})
		return nil
	case "vmap":
		return c.anonVmap()
	default:
		return fmt.Errorf("numgen followed by %q", t)
	}
}

// anonVmap reads "{ K : goto x , ... }" into an anonymous verdict map
// keyed by 32-bit integers, and looks register 1 up in it.
func (c *compiler) anonVmap() error {
	if err := c.expect("{"); err != nil {
		return err
	}
	set := anonSet{id: c.nextID(), keyType: "integer : verdict"}
	for {
		key := c.next()
		if err := c.expect(":"); err != nil {
			return err
		}
		v := c.next()
		if v == "jump" || v == "goto" {
			v += " " + c.next()
		}
		set.elements = append(set.elements, ElementOp{Key: []string{key}, Value: []string{v}})
		switch t := c.next(); t {
		case ",":
			continue
		case "}":
			c.out.anon = append(c.out.anon, set)
			c.emit(&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: "__map%d", SetID: set.id})
			return nil
		default:
			return fmt.Errorf("in a map: %q", t)
		}
	}
}

// mark: "meta mark set meta mark or|xor V" or "meta mark and V == N".
func (c *compiler) mark() error {
	c.i += 2
	load := &expr.Meta{Key: expr.MetaKeyMARK, Register: 1}
	switch c.next() {
	case "set":
		if err := c.expect("meta", "mark"); err != nil {
			return err
		}
		op := c.next()
		v, err := parseUint32(c.next())
		if err != nil {
			return err
		}
		mask, xor := ^v, v // or: clear the bits, then set them
		if op == "xor" {
			mask = 0xffffffff
		} else if op != "or" {
			return fmt.Errorf("meta mark set ... %s", op)
		}
		c.emit(load, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(mask), Xor: native32(xor)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
		return nil
	case "and":
		v, err := parseUint32(c.next())
		if err != nil {
			return err
		}
		if err := c.expect("=="); err != nil {
			return err
		}
		want, err := parseUint32(c.next())
		if err != nil {
			return err
		}
		c.emit(load, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(v), Xor: native32(0)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(want)})
		return nil
	}
	return fmt.Errorf("meta mark %q", c.toks[c.i-1])
}

// update: "update @set { ip saddr }".
func (c *compiler) update() error {
	c.next()
	set, err := c.setRef()
	if err != nil {
		return err
	}
	if err := c.expect("{"); err != nil {
		return err
	}
	sels, err := c.selectors()
	if err != nil {
		return err
	}
	if err := c.expect("}"); err != nil {
		return err
	}
	c.load(sels)
	c.emit(&expr.Dynset{SrcRegKey: 1, SetName: set, Operation: unix.NFT_DYNSET_OP_UPDATE})
	return nil
}

func (c *compiler) setRef() (string, error) {
	t := c.next()
	if t == "@" {
		t = "@" + c.next()
	}
	if !strings.HasPrefix(t, "@") || len(t) == 1 {
		return "", fmt.Errorf("expected @set, found %q", t)
	}
	return t[1:], nil
}

// reject: "reject" (ICMP port unreachable) or "reject with tcp reset".
func (c *compiler) reject() error {
	c.next()
	if c.peek(0) == "with" {
		if err := c.expect("with", "tcp", "reset"); err != nil {
			return err
		}
		c.emit(&expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
		return nil
	}
	code := uint8(3) // ICMP port unreachable
	if c.fam == IPv6 {
		code = 4 // ICMPv6 port unreachable
	}
	c.emit(&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: code})
	return nil
}

// dnat: "dnat to ADDR:PORT" or "dnat ip to SELECTORS map @m".
func (c *compiler) dnat() error {
	c.next()
	nat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(c.fam.proto()), RegAddrMin: 1, RegAddrMax: 1, Specified: true}
	if c.peek(0) == "to" {
		c.next()
		ap, err := netip.ParseAddrPort(c.next())
		if err != nil || !c.fam.Has(ap.Addr()) {
			return fmt.Errorf("dnat to %q", c.toks[c.i-1])
		}
		nat.RegProtoMin, nat.RegProtoMax = 2, 2
		c.emit(&expr.Immediate{Register: 1, Data: ap.Addr().Unmap().AsSlice()},
			&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, ap.Port())}, nat)
		return nil
	}
	if err := c.expect(c.fam.IP(), "to"); err != nil {
		return err
	}
	m, err := c.mapLookup()
	if err != nil {
		return err
	}
	c.emit(&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: m})
	reg := register(c.fam.addrLen() / 4) // the port follows the address
	nat.RegProtoMin, nat.RegProtoMax = reg, reg
	c.emit(nat)
	return nil
}

func parseUint32(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return 0, fmt.Errorf("number %q", s)
	}
	return uint32(v), nil
}

func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// mapLookup reads "SELECTORS map @m", loads the selectors and returns m.
func (c *compiler) mapLookup() (string, error) {
	sels, err := c.selectors()
	if err != nil {
		return "", err
	}
	if err := c.expect("map"); err != nil {
		return "", err
	}
	m, err := c.setRef()
	if err != nil {
		return "", err
	}
	c.load(sels)
	return m, nil
}
