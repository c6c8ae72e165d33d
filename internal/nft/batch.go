package nft

import (
	"encoding/binary"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"
)

// batch is a transaction encoded as one nfnetlink batch: a begin message,
// a message per operation (a run of element operations on one set shares
// messages), an end message, all in one buffer sent with one sendmsg. The
// kernel applies the messages between begin and end as one transaction.
type batch struct {
	fam   Family
	table string
	a     attrs
	seq   uint32
	msgs  []message
	ids   uint32
	types func(set string) (setDecl, error) // a set's declaration, for its elements
	added map[string]setDecl                // sets this batch adds, and their declarations
}

// message is one message of the batch and what it came from: an
// operation, or a run of element operations (with each element's offset,
// to name the one an extended ack points at).
type message struct {
	seq   uint32
	start int
	op    int   // index of the (first) operation
	elems []int // element messages: offset of each element in the message
}

// maxElemBytes bounds the elements of one message: the list is a nested
// attribute, whose length is 16 bits.
const maxElemBytes = 60000

func newBatch(fam Family, table string, seq uint32, ops int, types func(string) (setDecl, error)) *batch {
	b := &batch{fam: fam, table: table, seq: seq, types: types, added: map[string]setDecl{}}
	b.a.b = make([]byte, 0, 4096+48*ops) // an element takes 40-60 bytes
	b.control(unix.NFNL_MSG_BATCH_BEGIN)
	return b
}

// control writes a batch begin or end message.
func (b *batch) control(typ uint16) {
	b.header(typ, unix.NLM_F_REQUEST, 0)
	binary.BigEndian.PutUint16(b.a.b[len(b.a.b)-2:], unix.NFNL_SUBSYS_NFTABLES)
	b.finish(len(b.a.b) - 20)
}

// header starts a message: netlink header (its length patched by finish)
// and the nfgenmsg of family fam.
func (b *batch) header(typ, flags uint16, fam byte) int {
	start := len(b.a.b)
	b.seq++
	h := make([]byte, 20)
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags)
	binary.NativeEndian.PutUint32(h[8:], b.seq)
	h[16] = fam
	b.a.b = append(b.a.b, h...)
	return start
}

func (b *batch) finish(start int) {
	binary.NativeEndian.PutUint32(b.a.b[start:], uint32(len(b.a.b)-start))
}

// begin starts the message of operation op: an nf_tables message on the
// batch's table.
func (b *batch) begin(msg uint16, flags uint16, op int) *message {
	start := b.header(unix.NFNL_SUBSYS_NFTABLES<<8|msg, unix.NLM_F_REQUEST|flags, b.fam.proto())
	b.msgs = append(b.msgs, message{seq: b.seq, start: start, op: op})
	return &b.msgs[len(b.msgs)-1]
}

// done ends the batch and flags its last message for an ack, so that a
// batch the kernel accepts answers once.
func (b *batch) done() []byte {
	if n := len(b.msgs); n > 0 {
		last := b.msgs[n-1].start
		f := binary.NativeEndian.Uint16(b.a.b[last+6:])
		binary.NativeEndian.PutUint16(b.a.b[last+6:], f|unix.NLM_F_ACK)
	}
	b.control(unix.NFNL_MSG_BATCH_END)
	return b.a.b
}

// add encodes ops[i] (and, for elements, the run of element operations on
// the same set that follows it); it returns the index of the next
// operation.
func (b *batch) add(ops []Op, i int) (int, error) {
	op := ops[i]
	var err error
	switch o := op.Obj.(type) {
	case *knftables.Table:
		err = b.tableOp(op.Verb, o, i)
	case *knftables.Chain:
		err = b.chainOp(op.Verb, o, i)
	case *knftables.Rule:
		err = b.ruleOp(op.Verb, o, i)
	case *knftables.Set:
		err = b.setOp(op.Verb, o.Name, i, func() error { return b.a.set(o.Name, b.nextID(), o.Type, o.Flags, o.Timeout, o.Size, o.Comment) })
		b.learn(op.Verb, o.Name, declOf(o.Type, o.Flags))
	case *knftables.Map:
		err = b.setOp(op.Verb, o.Name, i, func() error { return b.a.set(o.Name, b.nextID(), o.Type, o.Flags, o.Timeout, o.Size, o.Comment) })
		b.learn(op.Verb, o.Name, declOf(o.Type, o.Flags))
	case *knftables.Element:
		return b.elements(ops, i)
	case *knftables.Counter:
		err = b.counterOp(op.Verb, o, i)
	default:
		err = fmt.Errorf("%T objects are not supported", op.Obj)
	}
	return i + 1, err
}

func (b *batch) learn(v Verb, name string, d setDecl) {
	if v == Add {
		b.added[name] = d
	}
}

func (b *batch) nextID() uint32 { b.ids++; return b.ids }

func (b *batch) tableOp(v Verb, t *knftables.Table, i int) error {
	switch v {
	case Add:
		m := b.begin(unix.NFT_MSG_NEWTABLE, unix.NLM_F_CREATE, i)
		b.a.str(unix.NFTA_TABLE_NAME, b.table)
		err := b.a.table(t)
		b.finish(m.start)
		return err
	case Delete:
		m := b.begin(unix.NFT_MSG_DELTABLE, 0, i)
		b.a.str(unix.NFTA_TABLE_NAME, b.table)
		b.finish(m.start)
	case Flush:
		m := b.begin(unix.NFT_MSG_DELRULE, 0, i)
		b.a.str(unix.NFTA_RULE_TABLE, b.table)
		b.finish(m.start)
	}
	return nil
}

func (b *batch) chainOp(v Verb, c *knftables.Chain, i int) error {
	var err error
	switch v {
	case Add:
		m := b.begin(unix.NFT_MSG_NEWCHAIN, unix.NLM_F_CREATE, i)
		b.a.str(unix.NFTA_CHAIN_TABLE, b.table)
		err = b.a.chain(c)
		b.finish(m.start)
	case Delete:
		m := b.begin(unix.NFT_MSG_DELCHAIN, 0, i)
		b.a.str(unix.NFTA_CHAIN_TABLE, b.table)
		b.a.str(unix.NFTA_CHAIN_NAME, c.Name)
		b.finish(m.start)
	case Flush:
		m := b.begin(unix.NFT_MSG_DELRULE, 0, i)
		b.a.str(unix.NFTA_RULE_TABLE, b.table)
		b.a.str(unix.NFTA_RULE_CHAIN, c.Name)
		b.finish(m.start)
	}
	return err
}

func (b *batch) ruleOp(v Verb, r *knftables.Rule, i int) error {
	switch v {
	case Add:
		c, err := compileRule(b.fam, r.Rule, b.nextID)
		if err != nil {
			return err
		}
		for _, s := range c.anon {
			if err := b.anonSet(s, i); err != nil {
				return err
			}
		}
		m := b.begin(unix.NFT_MSG_NEWRULE, unix.NLM_F_CREATE|unix.NLM_F_APPEND, i)
		b.a.str(unix.NFTA_RULE_TABLE, b.table)
		err = b.a.rule(b.fam, r, c.exprs)
		b.finish(m.start)
		return err
	case Delete:
		if r.Handle == nil {
			return fmt.Errorf("deleting a rule of %s needs its handle", r.Chain)
		}
		m := b.begin(unix.NFT_MSG_DELRULE, 0, i)
		b.a.str(unix.NFTA_RULE_TABLE, b.table)
		b.a.str(unix.NFTA_RULE_CHAIN, r.Chain)
		b.a.u64(unix.NFTA_RULE_HANDLE, uint64(*r.Handle))
		b.finish(m.start)
		return nil
	}
	return fmt.Errorf("rules cannot be flushed")
}

// anonSet adds a rule's constant anonymous map and its elements.
func (b *batch) anonSet(s anonSet, i int) error {
	key, data, _, err := parseSetType(s.keyType)
	if err != nil {
		return err
	}
	m := b.begin(unix.NFT_MSG_NEWSET, unix.NLM_F_CREATE, i)
	b.a.str(unix.NFTA_SET_TABLE, b.table)
	b.a.str(unix.NFTA_SET_NAME, "__map%d")
	b.a.u32(unix.NFTA_SET_FLAGS, unix.NFT_SET_ANONYMOUS|unix.NFT_SET_CONSTANT|unix.NFT_SET_MAP)
	b.a.u32(unix.NFTA_SET_KEY_TYPE, key.magic)
	b.a.u32(unix.NFTA_SET_KEY_LEN, key.size)
	b.a.u32(unix.NFTA_SET_DATA_TYPE, data.magic)
	b.a.u32(unix.NFTA_SET_DATA_LEN, data.size)
	b.a.u32(unix.NFTA_SET_ID, s.id)
	d := b.a.nest(unix.NFTA_SET_DESC)
	b.a.u32(unix.NFTA_SET_DESC_SIZE, uint32(len(s.elements)))
	b.a.end(d)
	b.a.raw(unix.NFTA_SET_USERDATA, udata(nil, 0, binary.NativeEndian.AppendUint32(nil, key.order)))
	b.finish(m.start)

	m = b.begin(unix.NFT_MSG_NEWSETELEM, unix.NLM_F_CREATE, i)
	b.a.str(unix.NFTA_SET_ELEM_LIST_TABLE, b.table)
	b.a.str(unix.NFTA_SET_ELEM_LIST_SET, "__map%d")
	b.a.u32(unix.NFTA_SET_ELEM_LIST_SET_ID, s.id)
	l := b.a.nest(unix.NFTA_SET_ELEM_LIST_ELEMENTS)
	for _, e := range s.elements {
		if err := b.a.element(setDecl{typ: s.keyType}, e); err != nil {
			return err
		}
	}
	b.a.end(l)
	b.finish(m.start)
	return nil
}

func (b *batch) setOp(v Verb, name string, i int, encode func() error) error {
	var err error
	switch v {
	case Add:
		m := b.begin(unix.NFT_MSG_NEWSET, unix.NLM_F_CREATE, i)
		b.a.str(unix.NFTA_SET_TABLE, b.table)
		err = encode()
		b.finish(m.start)
	case Delete:
		m := b.begin(unix.NFT_MSG_DELSET, 0, i)
		b.a.str(unix.NFTA_SET_TABLE, b.table)
		b.a.str(unix.NFTA_SET_NAME, name)
		b.finish(m.start)
	case Flush:
		m := b.begin(unix.NFT_MSG_DELSETELEM, 0, i)
		b.a.str(unix.NFTA_SET_ELEM_LIST_TABLE, b.table)
		b.a.str(unix.NFTA_SET_ELEM_LIST_SET, name)
		b.finish(m.start)
	}
	return err
}

// elements encodes the run of element operations with the verb and set of
// ops[i], in messages of at most maxElemBytes of elements.
func (b *batch) elements(ops []Op, i int) (int, error) {
	first := ops[i].Obj.(*knftables.Element)
	set := first.Set + first.Map
	decl, ok := b.added[set]
	if !ok {
		var err error
		if decl, err = b.types(set); err != nil {
			return i + 1, err
		}
	}
	verb := ops[i].Verb
	msg, flags := uint16(unix.NFT_MSG_NEWSETELEM), uint16(unix.NLM_F_CREATE)
	switch verb {
	case Delete:
		msg, flags = unix.NFT_MSG_DELSETELEM, 0
	case Flush:
		return i + 1, fmt.Errorf("elements cannot be flushed")
	}
	for i < len(ops) {
		m := b.begin(msg, flags, i)
		b.a.str(unix.NFTA_SET_ELEM_LIST_TABLE, b.table)
		b.a.str(unix.NFTA_SET_ELEM_LIST_SET, set)
		l := b.a.nest(unix.NFTA_SET_ELEM_LIST_ELEMENTS)
		for ; i < len(ops) && len(b.a.b)-l < maxElemBytes; i++ {
			e, ok := ops[i].Obj.(*knftables.Element)
			if !ok || ops[i].Verb != verb || e.Set+e.Map != set {
				break
			}
			idx := len(b.msgs) - 1
			b.msgs[idx].elems = append(b.msgs[idx].elems, len(b.a.b)-m.start)
			op := ElementOp{Delete: verb == Delete, Set: set, Key: e.Key, Value: e.Value}
			if e.Comment != nil {
				op.Comment = *e.Comment
			}
			if err := b.a.element(decl, op); err != nil {
				return i + 1, fmt.Errorf("element %s of %s: %w", strings.Join(e.Key, " . "), set, err)
			}
		}
		b.a.end(l)
		b.finish(m.start)
		if i < len(ops) {
			if e, ok := ops[i].Obj.(*knftables.Element); !ok || ops[i].Verb != verb || e.Set+e.Map != set {
				break
			}
		}
	}
	return i, nil
}

func (b *batch) counterOp(v Verb, c *knftables.Counter, i int) error {
	switch v {
	case Add:
		m := b.begin(unix.NFT_MSG_NEWOBJ, unix.NLM_F_CREATE, i)
		b.a.str(unix.NFTA_OBJ_TABLE, b.table)
		err := b.a.counter(c)
		b.finish(m.start)
		return err
	case Delete:
		m := b.begin(unix.NFT_MSG_DELOBJ, 0, i)
		b.a.str(unix.NFTA_OBJ_TABLE, b.table)
		b.a.str(unix.NFTA_OBJ_NAME, c.Name)
		b.a.u32(unix.NFTA_OBJ_TYPE, unix.NFT_OBJECT_COUNTER)
		b.finish(m.start)
		return nil
	}
	return fmt.Errorf("counters cannot be flushed")
}
