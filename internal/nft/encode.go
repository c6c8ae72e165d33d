package nft

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"
)

// Encoding a transaction as nf_tables netlink messages (what nft's libnftnl
// sends for the same commands): attributes are type-length-value records
// with host-order headers, padded to 4 bytes; nf_tables' own numbers are
// big-endian.

type attrs struct{ b []byte }

func (a *attrs) raw(typ uint16, data []byte) {
	a.b = binary.NativeEndian.AppendUint16(a.b, uint16(4+len(data)))
	a.b = binary.NativeEndian.AppendUint16(a.b, typ)
	a.b = append(a.b, data...)
	for len(a.b)%4 != 0 {
		a.b = append(a.b, 0)
	}
}

func (a *attrs) str(typ uint16, s string) {
	a.b = binary.NativeEndian.AppendUint16(a.b, uint16(5+len(s)))
	a.b = binary.NativeEndian.AppendUint16(a.b, typ)
	a.b = append(a.b, s...)
	a.b = append(a.b, 0)
	for len(a.b)%4 != 0 {
		a.b = append(a.b, 0)
	}
}

func (a *attrs) u32(typ uint16, v uint32) { a.raw(typ, binary.BigEndian.AppendUint32(nil, v)) }

func (a *attrs) u64(typ uint16, v uint64) { a.raw(typ, binary.BigEndian.AppendUint64(nil, v)) }

// nest opens a nested attribute; end closes it.
func (a *attrs) nest(typ uint16) int {
	start := len(a.b)
	a.b = append(a.b, 0, 0, 0, 0)
	binary.NativeEndian.PutUint16(a.b[start+2:], typ|unix.NLA_F_NESTED)
	return start
}

func (a *attrs) end(start int) {
	binary.NativeEndian.PutUint16(a.b[start:], uint16(len(a.b)-start))
}

// udata is libnftnl's user data: type, length, value records (comments
// with their NUL), which nft reads back to print comments and types.
func udata(b []byte, typ byte, v []byte) []byte {
	b = append(b, typ, byte(len(v)))
	return append(b, v...)
}

func comment(b []byte, typ byte, c *string) ([]byte, error) {
	if c == nil {
		return b, nil
	}
	if len(*c) > 127 {
		return nil, fmt.Errorf("comment longer than 127 bytes: %q", *c)
	}
	return udata(b, typ, append([]byte(*c), 0)), nil
}

func (a *attrs) table(t *knftables.Table) error {
	if len(t.Flags) > 0 || t.Handle != nil {
		return fmt.Errorf("table flags and handles are not supported")
	}
	ud, err := comment(nil, 0, t.Comment) // NFTNL_UDATA_TABLE_COMMENT
	if len(ud) > 0 {
		a.raw(nftaTableUserdata, ud)
	}
	return err
}

var hooks = map[knftables.BaseChainHook]uint32{
	knftables.PreroutingHook: unix.NF_INET_PRE_ROUTING, knftables.InputHook: unix.NF_INET_LOCAL_IN,
	knftables.ForwardHook: unix.NF_INET_FORWARD, knftables.OutputHook: unix.NF_INET_LOCAL_OUT,
	knftables.PostroutingHook: unix.NF_INET_POST_ROUTING,
}

var priorities = map[string]int{"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}

// priority reads "dstnat", "filter-10", "-100".
func priority(p knftables.BaseChainPriority) (int32, error) {
	s := string(p)
	i := strings.IndexAny(s[min(1, len(s)):], "+-") + 1
	if i == 0 {
		i = len(s)
	}
	base, ok := priorities[s[:i]]
	if !ok {
		n, err := strconv.Atoi(s)
		if err != nil {
			return 0, fmt.Errorf("chain priority %q", p)
		}
		return int32(n), nil
	}
	off := 0
	if i < len(s) {
		var err error
		if off, err = strconv.Atoi(s[i:]); err != nil {
			return 0, fmt.Errorf("chain priority %q", p)
		}
	}
	return int32(base + off), nil
}

func (a *attrs) chain(c *knftables.Chain) error {
	a.str(unix.NFTA_CHAIN_NAME, c.Name)
	if c.Policy != nil || c.Device != nil || c.Handle != nil {
		return fmt.Errorf("chain %s: policies, devices and handles are not supported", c.Name)
	}
	if c.Hook != nil {
		hook, ok := hooks[*c.Hook]
		if !ok || c.Type == nil || c.Priority == nil {
			return fmt.Errorf("chain %s: a base chain needs a known hook, a type and a priority", c.Name)
		}
		prio, err := priority(*c.Priority)
		if err != nil {
			return err
		}
		h := a.nest(unix.NFTA_CHAIN_HOOK)
		a.u32(unix.NFTA_HOOK_HOOKNUM, hook)
		a.u32(unix.NFTA_HOOK_PRIORITY, uint32(prio))
		a.end(h)
		a.str(unix.NFTA_CHAIN_TYPE, string(*c.Type))
	}
	ud, err := comment(nil, 0, c.Comment) // NFTNL_UDATA_CHAIN_COMMENT
	if len(ud) > 0 {
		a.raw(nftaChainUserdata, ud)
	}
	return err
}

// set encodes a set or a map (isMap), of a declared type such as
// "ipv4_addr . inet_proto . inet_service : verdict".
func (a *attrs) set(name string, id uint32, typ string, flags []knftables.SetFlag, timeout *time.Duration, size *uint64, cmt *string) error {
	key, data, isMap, err := parseSetType(typ)
	if err != nil {
		return fmt.Errorf("set %s: %w", name, err)
	}
	f, err := setFlags(flags, timeout != nil, data.counter, isMap)
	if err != nil {
		return fmt.Errorf("set %s: %w", name, err)
	}
	if len(key.fields) > 1 {
		f |= nftSetConcat // the kernel wants it with the fields' lengths
	} else if f&unix.NFT_SET_INTERVAL != 0 {
		// nft sends the ranges of these as pairs of elements, the second
		// flagged as an interval's end: not written here
		return fmt.Errorf("set %s: intervals of one field are not supported, only concatenations", name)
	}
	a.str(unix.NFTA_SET_NAME, name)
	a.u32(unix.NFTA_SET_FLAGS, f)
	a.u32(unix.NFTA_SET_KEY_TYPE, key.magic)
	a.u32(unix.NFTA_SET_KEY_LEN, key.size)
	switch {
	case data.counter:
		a.u32(unix.NFTA_SET_OBJ_TYPE, unix.NFT_OBJECT_COUNTER)
	case isMap:
		a.u32(unix.NFTA_SET_DATA_TYPE, data.magic)
		a.u32(unix.NFTA_SET_DATA_LEN, data.size)
	}
	a.u32(unix.NFTA_SET_ID, id)
	if timeout != nil {
		a.u64(unix.NFTA_SET_TIMEOUT, uint64(timeout.Milliseconds()))
	}
	a.setDesc(key, f, size)
	ud := udata(nil, 0, binary.NativeEndian.AppendUint32(nil, key.order)) // NFTNL_UDATA_SET_KEYBYTEORDER
	if isMap && data.order != 0 {
		ud = udata(ud, 1, binary.NativeEndian.AppendUint32(nil, data.order)) // NFTNL_UDATA_SET_DATABYTEORDER
	}
	if ud, err = comment(ud, 7, cmt); err != nil { // NFTNL_UDATA_SET_COMMENT
		return err
	}
	a.raw(unix.NFTA_SET_USERDATA, ud)
	return nil
}

// setFlags are the kernel's flags of a set declared with flags (a map
// when isMap, of named counters when counters).
func setFlags(flags []knftables.SetFlag, timeout, counters, isMap bool) (uint32, error) {
	var f uint32
	switch {
	case counters:
		f |= unix.NFT_SET_OBJECT
	case isMap:
		f |= unix.NFT_SET_MAP
	}
	for _, fl := range flags {
		switch fl {
		case knftables.DynamicFlag:
			f |= unix.NFT_SET_EVAL
		case knftables.TimeoutFlag:
			f |= unix.NFT_SET_TIMEOUT
		case knftables.ConstantFlag:
			f |= unix.NFT_SET_CONSTANT
		case knftables.IntervalFlag:
			f |= unix.NFT_SET_INTERVAL
		default:
			return 0, fmt.Errorf("flag %s is not supported", fl)
		}
	}
	if timeout {
		f |= unix.NFT_SET_TIMEOUT
	}
	return f, nil
}

// setDesc writes the size (nft gives a set that packets fill a size of
// 65535 unless told) and the field lengths of a concatenated key.
func (a *attrs) setDesc(key setType, flags uint32, size *uint64) {
	n := uint64(0)
	if size != nil {
		n = *size
	} else if flags&unix.NFT_SET_EVAL != 0 {
		n = 65535
	}
	if n == 0 && len(key.fields) < 2 {
		return
	}
	d := a.nest(unix.NFTA_SET_DESC)
	if n > 0 {
		a.u32(unix.NFTA_SET_DESC_SIZE, uint32(n))
	}
	if len(key.fields) > 1 {
		cc := a.nest(2) // NFTA_SET_DESC_CONCAT
		for _, fl := range key.fields {
			e := a.nest(unix.NFTA_LIST_ELEM)
			a.u32(1, fl) // NFTA_SET_FIELD_LEN
			a.end(e)
		}
		a.end(cc)
	}
	a.end(d)
}

// element encodes one element of a set declared as d.
func (a *attrs) element(d setDecl, op ElementOp) error {
	keyType, dataType, isMap := strings.Cut(d.typ, " : ")
	e := a.nest(unix.NFTA_LIST_ELEM)
	if err := a.elementKey(d, strings.Split(keyType, " . "), op.Key); err != nil {
		return err
	}
	if isMap && !op.Delete {
		if err := a.elementData(dataType, op.Value); err != nil {
			return err
		}
	}
	if op.Comment != "" && !op.Delete {
		ud, err := comment(nil, 0, &op.Comment) // NFTNL_UDATA_SET_ELEM_COMMENT
		if err != nil {
			return err
		}
		a.raw(unix.NFTA_SET_ELEM_USERDATA, ud)
	}
	a.end(e)
	return nil
}

// elementKey writes the key, and for an interval set the end key: nft
// sends both for every element, a single value as a range of one.
func (a *attrs) elementKey(d setDecl, types, vals []string) error {
	if !d.interval {
		key, err := encodeFields(types, vals)
		if err != nil {
			return err
		}
		k := a.nest(unix.NFTA_SET_ELEM_KEY)
		a.raw(unix.NFTA_DATA_VALUE, key)
		a.end(k)
		return nil
	}
	start, end, err := encodeRanges(types, vals)
	if err != nil {
		return err
	}
	k := a.nest(unix.NFTA_SET_ELEM_KEY)
	a.raw(unix.NFTA_DATA_VALUE, start)
	a.end(k)
	k = a.nest(nftaSetElemKeyEnd)
	a.raw(unix.NFTA_DATA_VALUE, end)
	a.end(k)
	return nil
}

func (a *attrs) elementData(dataType string, value []string) error {
	if dataType == "counter" { // the name of a counter of the table
		if len(value) != 1 || value[0] == "" {
			return fmt.Errorf("counter %v", value)
		}
		a.str(unix.NFTA_SET_ELEM_OBJREF, value[0])
		return nil
	}
	d := a.nest(unix.NFTA_SET_ELEM_DATA)
	defer a.end(d)
	if dataType != "verdict" {
		b, err := encodeFields(strings.Split(dataType, " . "), value)
		if err != nil {
			return err
		}
		a.raw(unix.NFTA_DATA_VALUE, b)
		return nil
	}
	if len(value) != 1 {
		return fmt.Errorf("verdict %v", value)
	}
	v, err := verdict(value[0])
	if err != nil {
		return err
	}
	vd := a.nest(unix.NFTA_DATA_VERDICT)
	a.u32(unix.NFTA_VERDICT_CODE, uint32(int32(v.Kind)))
	if v.Chain != "" {
		a.str(unix.NFTA_VERDICT_CHAIN, v.Chain)
	}
	a.end(vd)
	return nil
}

// rule encodes a rule's expressions (and its comment).
func (a *attrs) rule(fam Family, r *knftables.Rule, exprs []any) error {
	if r.Index != nil {
		return fmt.Errorf("rule positions are not supported")
	}
	a.str(unix.NFTA_RULE_CHAIN, r.Chain)
	l := a.nest(unix.NFTA_RULE_EXPRESSIONS)
	for _, e := range exprs {
		if m, ok := e.(*objrefMap); ok {
			m.encode(a)
			continue
		}
		b, err := expr.Marshal(fam.proto(), e.(expr.Any))
		if err != nil {
			return err
		}
		a.raw(unix.NFTA_LIST_ELEM|unix.NLA_F_NESTED, b)
	}
	a.end(l)
	ud, err := comment(nil, 0, r.Comment) // NFTNL_UDATA_RULE_COMMENT
	if len(ud) > 0 {
		a.raw(unix.NFTA_RULE_USERDATA, ud)
	}
	return err
}

// Attributes newer than golang.org/x/sys/unix knows (linux/netfilter/nf_tables.h).
const (
	nftaTableUserdata = 6  // NFTA_TABLE_USERDATA
	nftaChainUserdata = 12 // NFTA_CHAIN_USERDATA
	nftSetConcat      = 0x80
	nftaSetElemKeyEnd = 10 // NFTA_SET_ELEM_KEY_END
	nftaObjUserdata   = 8  // NFTA_OBJ_USERDATA
)

// objrefMap is "counter name FIELDS map @m", which google/nftables does
// not have: the named counter the map gives the key in register sreg.
type objrefMap struct {
	sreg uint32
	set  string
}

func (m *objrefMap) encode(a *attrs) {
	e := a.nest(unix.NFTA_LIST_ELEM)
	a.str(unix.NFTA_EXPR_NAME, "objref")
	d := a.nest(unix.NFTA_EXPR_DATA)
	a.u32(unix.NFTA_OBJREF_SET_SREG, m.sreg)
	a.str(unix.NFTA_OBJREF_SET_NAME, m.set)
	a.end(d)
	a.end(e)
}

// counter encodes a named counter (the object; it starts at zero).
func (a *attrs) counter(c *knftables.Counter) error {
	if c.Handle != nil || c.Packets != nil || c.Bytes != nil {
		return fmt.Errorf("counter %s: handles and initial values are not supported", c.Name)
	}
	a.str(unix.NFTA_OBJ_NAME, c.Name)
	a.u32(unix.NFTA_OBJ_TYPE, unix.NFT_OBJECT_COUNTER)
	d := a.nest(unix.NFTA_OBJ_DATA)
	a.end(d)
	ud, err := comment(nil, 0, c.Comment) // NFTNL_UDATA_OBJ_COMMENT
	if len(ud) > 0 {
		a.raw(nftaObjUserdata, ud)
	}
	return err
}
