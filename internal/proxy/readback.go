package proxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// tableFrontends reads back the UDP frontends of Services with endpoints
// that the table holds: what the previous flatnetd programmed, for a
// restarted one. Its first sync cannot know otherwise that a Service was
// deleted while no proxy ran, and the UDP flows to it would keep going to
// its old endpoints until conntrack forgets them. Two map listings, once
// per process.
func (p *Proxier) tableFrontends(ctx context.Context) ([]frontend, error) {
	if raw, ok := p.nft.(rawKeyLister); ok {
		return p.rawFrontends(raw)
	}
	lister, ok := p.nft.(elementLister) // the Fake
	if !ok {
		return nil, nil
	}
	var out []frontend
	for _, m := range []string{serviceIPsMap, serviceNodePortsMap} {
		elems, err := lister.ListElements(ctx, "map", m)
		if nft.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list map %s: %w", m, err)
		}
		for _, e := range elems {
			if f, ok := parseFrontend(e.Key); ok && f.proto == corev1.ProtocolUDP {
				out = append(out, f)
			}
		}
	}
	return out, nil
}

type elementLister interface {
	ListElements(ctx context.Context, objectType, name string) ([]*knftables.Element, error)
}

// rawKeyLister lists a map's keys in the kernel's own layout (nft.New
// does, over netlink).
type rawKeyLister interface {
	MapKeys(name string) ([][]byte, error)
}

// rawFrontends decodes the keys of the Service maps as the kernel keeps a
// concatenation: each field padded to 4 bytes, "address . protocol . port"
// (4 or 16 bytes of address) and "protocol . port", the port big-endian.
func (p *Proxier) rawFrontends(raw rawKeyLister) ([]frontend, error) {
	addrLen := p.cfg.Family.AddrLen()
	var out []frontend
	for _, m := range []struct {
		name string
		addr int
	}{{serviceIPsMap, addrLen}, {serviceNodePortsMap, 0}} {
		keys, err := raw.MapKeys(m.name)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			if len(k) != m.addr+8 || k[m.addr] != unix.IPPROTO_UDP {
				continue
			}
			f := frontend{proto: corev1.ProtocolUDP, port: binary.BigEndian.Uint16(k[m.addr+4:])}
			if m.addr > 0 {
				f.addr, _ = netip.AddrFromSlice(k[:m.addr])
			}
			out = append(out, f)
		}
	}
	return out, nil
}

// parseFrontend reads a key of the Service maps: "address . protocol .
// port" or, for a NodePort, "protocol . port".
func parseFrontend(key []string) (frontend, bool) {
	var f frontend
	if len(key) == 3 {
		a, err := netip.ParseAddr(key[0])
		if err != nil {
			return f, false
		}
		f.addr, key = a, key[1:]
	}
	if len(key) != 2 {
		return f, false
	}
	port, err := strconv.ParseUint(key[1], 10, 16)
	if err != nil {
		return f, false
	}
	f.proto, f.port = corev1.Protocol(strings.ToUpper(key[0])), uint16(port)
	return f, true
}

// goneFlows names the UDP flows to frontends the table held before this
// process and no Service port has now.
func goneFlows(before []frontend, cur map[ServicePortName]*portObjects) []Flow {
	now := map[frontend]bool{}
	for _, o := range cur {
		for f := range claimsOf(o.sp) {
			now[f] = true
		}
	}
	var out []Flow
	for _, f := range before {
		if !now[f] {
			out = append(out, Flow{Protocol: unix.IPPROTO_UDP, Dst: f.addr, Port: f.port})
		}
	}
	return out
}
