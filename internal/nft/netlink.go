package nft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	gnftables "github.com/google/nftables"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"
)

// kernel is Tables over netlink, in the network namespace of the thread
// that calls it.
type kernel struct {
	fam   Family
	table string
	conn  *gnftables.Conn // listings: a netlink socket per call
	mu    sync.Mutex
	types map[string]setDecl // the declarations of the table's sets, as last seen
	seq   uint32
}

var _ Tables = &kernel{}

// New returns the table named table in family fam, in the kernel.
func New(fam Family, table string) (Tables, error) {
	conn, err := gnftables.New()
	if err != nil {
		return nil, err
	}
	return &kernel{fam: fam, table: table, conn: conn, types: map[string]setDecl{}, seq: uint32(time.Now().Unix())}, nil
}

// NewTx implements Tables.
func (k *kernel) NewTx() *Tx { return &Tx{} }

// Run implements Tables: tx as one netlink batch.
func (k *kernel) Run(_ context.Context, tx *Tx) error {
	if len(tx.ops) == 0 {
		return nil // an empty batch would get no answer to wait for
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	b := newBatch(k.fam, k.table, k.seq, len(tx.ops), k.setType)
	for i := 0; i < len(tx.ops); {
		next, err := b.add(tx.ops, i)
		if err != nil {
			return fmt.Errorf("%s: %w", k.render(tx.ops[i]), err)
		}
		i = next
	}
	buf := b.done()
	k.seq = b.seq
	if err := k.send(buf, b, tx.ops); err != nil {
		k.types = map[string]setDecl{} // what the kernel holds is in doubt
		return err
	}
	for _, op := range tx.ops {
		switch o := op.Obj.(type) {
		case *knftables.Set:
			k.forget(op.Verb, o.Name, declOf(o.Type, o.Flags))
		case *knftables.Map:
			k.forget(op.Verb, o.Name, declOf(o.Type, o.Flags))
		case *knftables.Table:
			if op.Verb == Delete {
				k.types = map[string]setDecl{}
			}
		}
	}
	return nil
}

func (k *kernel) forget(v Verb, name string, d setDecl) {
	switch v {
	case Add:
		k.types[name] = d
	case Delete:
		delete(k.types, name)
	}
}

// setType is the declaration of a set the kernel holds (asked once, then
// known).
func (k *kernel) setType(name string) (setDecl, error) {
	if d, ok := k.types[name]; ok {
		return d, nil
	}
	s, err := k.conn.GetSetByName(&gnftables.Table{Name: k.table, Family: gnftables.TableFamily(k.fam.proto())}, name)
	if err != nil {
		return setDecl{}, fmt.Errorf("the type of set %s: %w", name, err)
	}
	if s.IsMap && s.DataType.Name == "" {
		// google/nftables v0.3.0 reads a verdict map's data type into its
		// key type: the key type is lost
		return setDecl{}, fmt.Errorf("the type of verdict map %s cannot be read back", name)
	}
	d := setDecl{typ: s.KeyType.Name, interval: s.Interval}
	if s.IsMap {
		d.typ += " : " + s.DataType.Name
	}
	if _, _, _, err := parseSetType(d.typ); err != nil {
		return setDecl{}, fmt.Errorf("set %s: %w", name, err)
	}
	k.types[name] = d
	return d, nil
}

// render writes op as nft would, for errors.
func (k *kernel) render(op Op) string {
	tx := knftables.NewFake(k.fam.NFT(), k.table).NewTransaction()
	(&Tx{fake: tx}).op(op.Verb, op.Obj)
	return strings.TrimSpace(tx.String())
}

// send sends the batch and reads the kernel's answers: none but the ack
// of the last message when it applied the batch; an error for each
// message it refused (then it applied nothing).
func (k *kernel) send(buf []byte, b *batch, ops []Op) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink bind: %w", err)
	}
	// The batch goes in one sendmsg, which the kernel refuses past the send
	// buffer; extended acks name the refused attribute; capped acks do not
	// copy a refused message back.
	for _, o := range []struct{ level, opt, val int }{
		{unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, len(buf) + 4096},
		{unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1 << 20},
		{unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1},
		{unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.val); err != nil {
			return fmt.Errorf("netlink socket option %d: %w", o.opt, err)
		}
	}
	if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send %d bytes of nftables batch: %w", len(buf), err)
	}
	// The kernel handles the batch inside sendmsg: its answers are queued.
	answered, first := false, (*Error)(nil)
	rbuf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, rbuf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EWOULDBLOCK) {
			break
		}
		if err != nil {
			return fmt.Errorf("read the kernel's answer: %w", err)
		}
		for _, a := range parseAcks(rbuf[:n]) {
			answered = true
			if a.errno != 0 && first == nil {
				first = k.refused(a, b, ops, buf)
			}
		}
	}
	if first != nil {
		return first
	}
	if !answered {
		return errors.New("the kernel did not answer the nftables batch")
	}
	return nil
}

type ack struct {
	seq    uint32
	errno  syscall.Errno
	offset int    // of the refused attribute in the message, or -1
	reason string // the extended ack's message
}

// parseAcks reads netlink error messages (an ack is one with error 0).
func parseAcks(b []byte) []ack {
	var out []ack
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			break
		}
		typ, flags := binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint16(b[6:])
		if typ == unix.NLMSG_ERROR && l >= 36 {
			a := ack{offset: -1}
			a.errno = syscall.Errno(-int32(binary.NativeEndian.Uint32(b[16:])))
			a.seq = binary.NativeEndian.Uint32(b[20+8:])
			if flags&unix.NLM_F_ACK_TLVS != 0 {
				a.readTLVs(b[36:l])
			}
			out = append(out, a)
		}
		next := (l + 3) &^ 3
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	return out
}

func (a *ack) readTLVs(b []byte) {
	for len(b) >= 4 {
		l, typ := int(binary.NativeEndian.Uint16(b)), binary.NativeEndian.Uint16(b[2:])
		if l < 4 || l > len(b) {
			return
		}
		v := b[4:l]
		switch typ {
		case unix.NLMSGERR_ATTR_MSG:
			a.reason = strings.TrimRight(string(v), "\x00")
		case unix.NLMSGERR_ATTR_OFFS:
			if len(v) >= 4 {
				a.offset = int(binary.NativeEndian.Uint32(v))
			}
		}
		b = b[(l+3)&^3:]
	}
}

// refused names the operation (and element) the kernel refused.
func (k *kernel) refused(a ack, b *batch, ops []Op, buf []byte) *Error {
	e := &Error{Errno: a.errno, Reason: a.reason, Command: "the nftables batch"}
	for _, m := range b.msgs {
		if m.seq != a.seq {
			continue
		}
		e.Command = k.render(ops[m.op])
		if len(m.elems) == 0 {
			return e
		}
		// the refused element: the last one starting at or before the offset
		idx := 0
		for j, off := range m.elems {
			if a.offset >= off {
				idx = j
			}
		}
		if a.offset < 0 && len(m.elems) > 1 {
			e.Object = fmt.Sprintf("one of %d elements", len(m.elems))
			return e
		}
		e.Command = k.render(ops[m.op+idx])
		if el, ok := ops[m.op+idx].Obj.(*knftables.Element); ok {
			e.Object = strings.Join(el.Key, " . ")
		}
		return e
	}
	return e
}

// List implements Tables: the names of the table's chains, sets or maps,
// but the anonymous sets of rules.
func (k *kernel) List(_ context.Context, objectType string) ([]string, error) {
	table := &gnftables.Table{Name: k.table, Family: gnftables.TableFamily(k.fam.proto())}
	tables, err := k.conn.ListTablesOfFamily(table.Family)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	found := false
	for _, t := range tables {
		found = found || t.Name == k.table
	}
	if !found {
		return nil, nil
	}
	var names []string
	switch strings.TrimSuffix(objectType, "s") {
	case "chain":
		chains, err := k.conn.ListChainsOfTableFamily(table.Family)
		if err != nil {
			return nil, fmt.Errorf("list chains: %w", err)
		}
		for _, c := range chains {
			if c.Table.Name == k.table {
				names = append(names, c.Name)
			}
		}
	case "set", "map":
		sets, err := k.conn.GetSets(table)
		if err != nil {
			return nil, fmt.Errorf("list sets: %w", err)
		}
		for _, s := range sets {
			if !s.Anonymous && !strings.HasPrefix(s.Name, "__") && s.IsMap == strings.HasPrefix(objectType, "map") {
				names = append(names, s.Name)
			}
		}
	default:
		return nil, fmt.Errorf("cannot list %q", objectType)
	}
	return names, nil
}
