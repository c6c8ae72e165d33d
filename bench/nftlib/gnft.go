package main

import (
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// gnft drives github.com/google/nftables: each transaction is a list of
// netlink messages (one per table, chain, rule and element command, as nft
// sends them) that Conn.Flush sends as one batch, which the kernel commits
// atomically. Each rule is spelled in kernel expressions, the ones nft
// compiles the proxy's rule text to (see `nft --debug=netlink`).
type gnft struct {
	cc  *nftables.Conn
	tbl *nftables.Table
	set *nftables.Set
}

// sockBuf is the netlink socket's send and receive buffer (set with
// SO_SNDBUFFORCE / SO_RCVBUFFORCE): Flush sends the whole batch in one
// sendmsg, which the kernel refuses past the send buffer (EMSGSIZE), and
// every message asks for an ack, all queued before Flush reads the first,
// which past the receive buffer are dropped (ENOBUFS). The defaults (about
// 200 KiB) stop short of 1000 Services. Set by -gnft-sockbuf.
var sockBuf = 256 << 20

// gnftLocked keeps google/nftables on the locked thread (-gnft-locked).
var gnftLocked bool

func newGnft(nsFd int) (*gnft, error) {
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithNetNSFd(nsFd)}
	if sockBuf > 0 {
		opts = append(opts, nftables.WithSockOptions(func(c *netlink.Conn) error {
			if err := c.SetReadBuffer(sockBuf); err != nil {
				return err
			}
			return c.SetWriteBuffer(sockBuf)
		}))
	}
	cc, err := nftables.New(opts...)
	if err != nil {
		return nil, err
	}
	tbl := &nftables.Table{Name: gnftTableName, Family: nftables.TableFamilyIPv4}
	return &gnft{cc: cc, tbl: tbl}, nil
}

func (g *gnft) close() { _ = g.cc.CloseLasting() }

func (g *gnft) timed(f func() error) (time.Duration, error) {
	if gnftLocked {
		return timeHere(f)
	}
	return timeOffThread(f)
}

func (g *gnft) name() string  { return libGnft }
func (g *gnft) table() string { return gnftTableName }

func (g *gnft) chain(name string) *nftables.Chain { return &nftables.Chain{Name: name, Table: g.tbl} }

func (g *gnft) rule(chain string, exprs ...expr.Any) {
	g.cc.AddRule(&nftables.Rule{Table: g.tbl, Chain: g.chain(chain), Exprs: exprs})
}

func (g *gnft) load(sh shape, svcs []service) error {
	g.cc.AddTable(g.tbl)
	g.cc.AddChain(&nftables.Chain{Name: servicesChain, Table: g.tbl, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	g.cc.AddChain(g.chain(markMasqChain))
	// A new Set each load: AddSet gives it a batch-local ID that the
	// lookup below refers to.
	g.set = &nftables.Set{Table: g.tbl, Name: serviceIPsMap, IsMap: true,
		KeyType:       nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService),
		DataType:      nftables.TypeVerdict,
		Concatenation: true, // sends the field lengths (NFTA_SET_DESC_CONCAT), as nft does
	}
	if err := g.cc.AddSet(g.set, nil); err != nil {
		return err
	}
	// ip daddr . meta l4proto . th dport vmap @service-ips: the three
	// fields land in consecutive 32-bit registers 8, 9, 10, which the
	// 128-bit register 1 spans, and the lookup reads them from there.
	g.rule(servicesChain,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 9},
		&expr.Payload{DestRegister: 10, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: serviceIPsMap, SetID: g.set.ID})
	// meta mark set meta mark or 0x4000
	g.rule(markMasqChain,
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^uint32(masqBit)), Xor: binaryutil.NativeEndian.PutUint32(masqBit)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
	for _, s := range svcs {
		if err := g.addService(sh, s, 0); err != nil {
			return err
		}
	}
	return g.cc.Flush()
}

func (g *gnft) addService(sh shape, s service, gen int) error {
	chains := s.chains(sh, gen)
	for _, c := range chains { // first the chains: a rule can only goto one that exists
		g.cc.AddChain(g.chain(c.name))
	}
	for _, c := range chains {
		for _, r := range c.rules {
			g.rule(c.name, ruleExprs(r)...)
		}
	}
	return g.cc.SetAddElements(g.set, []nftables.SetElement{g.element(s)})
}

// element is "vip . tcp . 80 : goto svc-<i>". A concatenated key is the
// fields one after the other, each padded to 4 bytes.
func (g *gnft) element(s service) nftables.SetElement {
	ip := s.vip.As4()
	key := []byte{ip[0], ip[1], ip[2], ip[3], unix.IPPROTO_TCP, 0, 0, 0, servicePort >> 8, servicePort & 0xff, 0, 0}
	return nftables.SetElement{Key: key, VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: s.svcChain()}}
}

// ruleExprs compiles a ruleSpec as nft does.
func ruleExprs(r ruleSpec) []expr.Any {
	if r.masq {
		// ip saddr != 10.244.0.0/16: nft compares the first two bytes only.
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 2},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{10, 244}},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: markMasqChain},
		}
	}
	var out []expr.Any
	if r.mod > 0 {
		out = append(out,
			&expr.Numgen{Register: 1, Modulus: uint32(r.mod), Type: unix.NFT_NG_RANDOM},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)})
	}
	if r.goTo != "" {
		out = append(out, &expr.Verdict{Kind: expr.VerdictGoto, Chain: r.goTo})
	}
	if r.dnatTo.IsValid() {
		ip := r.dnatTo.As4()
		out = append(out,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Immediate{Register: 1, Data: ip[:]},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(targetPort)},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true})
	}
	return out
}

// update sends what knft.update sends, as netlink messages.
func (g *gnft) update(sh shape, s service, gen int) error {
	if g.set == nil {
		return fmt.Errorf("update before load")
	}
	for _, c := range s.chains(sh, gen) {
		g.cc.FlushChain(g.chain(c.name))
	}
	if err := g.cc.SetDeleteElements(g.set, []nftables.SetElement{g.element(s)}); err != nil {
		return err
	}
	if err := g.addService(sh, s, gen); err != nil {
		return err
	}
	return g.cc.Flush()
}

func (g *gnft) drop() error {
	g.cc.AddTable(g.tbl) // as for knftables: add, then delete, so a missing table is fine
	g.cc.DelTable(g.tbl)
	return g.cc.Flush()
}
