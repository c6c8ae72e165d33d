package nft

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	gnftables "github.com/google/nftables"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"
)

// ListElements implements Tables: the elements of a set or map over
// netlink, each field of a key or value decoded from the set's type (a
// restarted engine reads its records back this way: element comments
// included).
func (k *kernel) ListElements(_ context.Context, objectType, name string) ([]*knftables.Element, error) {
	k.mu.Lock()
	d, err := k.setType(name)
	k.mu.Unlock()
	if err != nil {
		if strings.Contains(err.Error(), unix.ENOENT.Error()) {
			return nil, nil // no such table or set
		}
		return nil, err
	}
	keyType, dataType, isMap := strings.Cut(d.typ, " : ")
	if d.interval || dataType == "verdict" {
		return nil, fmt.Errorf("list %s: sets of intervals and verdict maps are not read", name)
	}
	elems, err := k.conn.GetSetElements(&gnftables.Set{Table: &gnftables.Table{Name: k.table, Family: gnftables.TableFamily(k.fam.proto())}, Name: name})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", name, err)
	}
	out := make([]*knftables.Element, 0, len(elems))
	for _, e := range elems {
		el := &knftables.Element{Comment: nonEmpty(e.Comment)}
		if el.Key, err = decodeFields(strings.Split(keyType, " . "), e.Key); err != nil {
			return nil, fmt.Errorf("list %s: %w", name, err)
		}
		if isMap {
			if el.Value, err = decodeFields(strings.Split(dataType, " . "), e.Val); err != nil {
				return nil, fmt.Errorf("list %s: %w", name, err)
			}
		}
		if objectType == "map" {
			el.Map = name
		} else {
			el.Set = name
		}
		out = append(out, el)
	}
	return out, nil
}

func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// decodeFields reads a key or value the kernel keeps: in a concatenation
// each field takes a multiple of 4 bytes.
func decodeFields(types []string, b []byte) ([]string, error) {
	out := make([]string, len(types))
	for i, t := range types {
		dt, ok := datatypes[t]
		if !ok || len(b) < int(dt.size) {
			return nil, fmt.Errorf("cannot read %d bytes as %s", len(b), strings.Join(types, " . "))
		}
		out[i] = decodeField(t, b[:dt.size])
		n := int(dt.size)
		if len(types) > 1 {
			n = (n + 3) &^ 3
		}
		b = b[min(n, len(b)):]
	}
	return out, nil
}

func decodeField(typ string, b []byte) string {
	switch typ {
	case "ipv4_addr", "ipv6_addr":
		a, _ := netip.AddrFromSlice(b)
		return a.String()
	case "ifname":
		return strings.TrimRight(string(b), "\x00")
	case "inet_service":
		return strconv.Itoa(int(binary.BigEndian.Uint16(b)))
	case "ethertype":
		t := binary.BigEndian.Uint16(b)
		for name, v := range ethertypes {
			if v == t {
				return name
			}
		}
		return strconv.Itoa(int(t))
	case "inet_proto":
		for name, p := range protocols {
			if p == b[0] {
				return name
			}
		}
		return strconv.Itoa(int(b[0]))
	}
	return strconv.FormatUint(uint64(binary.NativeEndian.Uint32(b)), 10)
}

// ListCounters implements Tables: the named counters over netlink, with
// their values (not their comments).
func (k *kernel) ListCounters(_ context.Context) ([]*knftables.Counter, error) {
	objs, err := k.conn.GetObjects(&gnftables.Table{Name: k.table, Family: gnftables.TableFamily(k.fam.proto())})
	if err != nil {
		if strings.Contains(err.Error(), unix.ENOENT.Error()) {
			return nil, nil
		}
		return nil, fmt.Errorf("list counters: %w", err)
	}
	var out []*knftables.Counter
	for _, o := range objs {
		if c, ok := o.(*gnftables.CounterObj); ok && c.Table != nil && c.Table.Name == k.table {
			out = append(out, &knftables.Counter{Name: c.Name, Packets: knftables.PtrTo(c.Packets), Bytes: knftables.PtrTo(c.Bytes)})
		}
	}
	return out, nil
}
