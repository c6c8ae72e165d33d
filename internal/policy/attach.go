package policy

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// An Attachment is a pod's interface on this node as the CNI plugin made
// it: the host end of its veth, its addresses, and the pod it belongs to.
type Attachment struct {
	HostVeth string
	IPs      []netip.Addr
	UID      types.UID
	// Pod is the pod as looked up at admission, for as long as the
	// informer's cache does not hold it; nil for a record read back from
	// the kernel.
	Pod   *corev1.Pod
	Since time.Time
	// restored: read back from the kernel by a restarted agent.
	restored bool
}

// Attachments is this node's record of its pods' attachments, shared by
// the engines of every family. It is the truth about which addresses the
// pods of this node hold, ahead of their status in the API server (which
// comes seconds later, after the pod has started): each engine overlays
// it on the cluster it computes from, and keeps it in its table (set
// "attachments", one element per host veth and address, its comment the
// pod's UID), from which a restarted agent reads it back.
//
// A record leaves when the plugin's DEL says so, when another attachment
// takes one of its addresses, or when its veth has been gone for longer
// than PruneAfter (a DEL that never reached the agent).
type Attachments struct {
	mu     sync.Mutex
	byVeth map[string]*Attachment
	// Links lists the names of the node's interfaces, to prune the
	// records of veths gone; nil: records are never pruned.
	Links     func() (map[string]bool, error)
	now       func() time.Time
	lastPrune time.Time
}

// PruneAfter is how long a record may name a veth that does not exist:
// the plugin admits addresses before it makes the veth.
const PruneAfter = time.Minute

// NewAttachments returns an empty record.
func NewAttachments() *Attachments {
	return &Attachments{byVeth: map[string]*Attachment{}, now: time.Now}
}

// Admit records a, replacing the record of its veth; an address it holds
// leaves every other record (the address was released and given again).
func (s *Attachments) Admit(a Attachment) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a.Since.IsZero() {
		a.Since = s.now()
	}
	a.IPs = slices.Clone(a.IPs)
	for veth, o := range s.byVeth {
		if veth == a.HostVeth {
			continue
		}
		o.IPs = slices.DeleteFunc(slices.Clone(o.IPs), func(ip netip.Addr) bool { return slices.Contains(a.IPs, ip) })
		if len(o.IPs) == 0 {
			delete(s.byVeth, veth)
		}
	}
	s.byVeth[a.HostVeth] = &a
}

// Release forgets the attachment of a veth; it reports whether there was
// one.
func (s *Attachments) Release(hostVeth string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.byVeth[hostVeth]
	delete(s.byVeth, hostVeth)
	return ok
}

// restore adds an address read back from the kernel, unless this agent
// has admitted something newer for that veth or address.
func (s *Attachments) restore(veth string, ip netip.Addr, uid types.UID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range s.byVeth {
		if !o.restored && slices.Contains(o.IPs, ip) {
			return
		}
	}
	a, ok := s.byVeth[veth]
	switch {
	case !ok:
		s.byVeth[veth] = &Attachment{HostVeth: veth, IPs: []netip.Addr{ip}, UID: uid, Since: s.now(), restored: true}
	case a.restored && a.UID == uid && !slices.Contains(a.IPs, ip):
		a.IPs = append(slices.Clone(a.IPs), ip)
	}
}

// List is every record, sorted by veth.
func (s *Attachments) List() []Attachment {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Attachment, 0, len(s.byVeth))
	for _, a := range s.byVeth {
		out = append(out, *a)
	}
	slices.SortFunc(out, func(a, b Attachment) int { return strings.Compare(a.HostVeth, b.HostVeth) })
	return out
}

// prune drops the records of veths gone for longer than PruneAfter, at
// most every few seconds.
func (s *Attachments) prune() error {
	if s.Links == nil {
		return nil
	}
	s.mu.Lock()
	now := s.now()
	if now.Sub(s.lastPrune) < 5*time.Second {
		s.mu.Unlock()
		return nil
	}
	s.lastPrune = now
	s.mu.Unlock()
	links, err := s.Links()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for veth, a := range s.byVeth {
		if !links[veth] && now.Sub(a.Since) > PruneAfter {
			delete(s.byVeth, veth)
		}
	}
	return nil
}

// overlay is c with the addresses of this node's attachments: each
// attached pod (found by UID in c, or as admitted) holds exactly the
// addresses of its attachments, and no other pod holds any of them (a
// status that names a released address is stale).
func overlay(c *Cluster, atts []Attachment) *Cluster {
	if len(atts) == 0 {
		return c
	}
	ips := map[types.UID][]netip.Addr{}
	admitted := map[types.UID]*corev1.Pod{}
	claimed := map[netip.Addr]bool{}
	for _, a := range atts {
		ips[a.UID] = append(ips[a.UID], a.IPs...)
		if a.Pod != nil {
			admitted[a.UID] = a.Pod
		}
		for _, ip := range a.IPs {
			claimed[ip] = true
		}
	}
	out := *c
	out.Pods = make([]*corev1.Pod, 0, len(c.Pods)+len(admitted))
	for _, p := range c.Pods {
		if got, ok := ips[p.UID]; ok {
			out.Pods = append(out.Pods, withIPs(p, got))
			delete(admitted, p.UID)
			continue
		}
		out.Pods = append(out.Pods, withoutIPs(p, claimed))
	}
	for uid, p := range admitted {
		out.Pods = append(out.Pods, withIPs(p, ips[uid]))
	}
	return &out
}

// withIPs is a copy of p holding exactly ips.
func withIPs(p *corev1.Pod, ips []netip.Addr) *corev1.Pod {
	c := *p
	c.Status.PodIP, c.Status.PodIPs = "", nil
	for _, ip := range ips {
		c.Status.PodIPs = append(c.Status.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	if len(ips) > 0 {
		c.Status.PodIP = ips[0].String()
	}
	return &c
}

// withoutIPs is p, or a copy of it without the addresses in claimed.
func withoutIPs(p *corev1.Pod, claimed map[netip.Addr]bool) *corev1.Pod {
	var keep []netip.Addr
	dropped := false
	for _, ip := range p.Status.PodIPs {
		a, err := netip.ParseAddr(ip.IP)
		switch {
		case err != nil:
		case claimed[a.Unmap()]:
			dropped = true
		default:
			keep = append(keep, a)
		}
	}
	if a, err := netip.ParseAddr(p.Status.PodIP); len(p.Status.PodIPs) == 0 && err == nil && claimed[a.Unmap()] {
		dropped = true
	}
	if !dropped {
		return p
	}
	return withIPs(p, keep)
}
