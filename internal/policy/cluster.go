package policy

import (
	"errors"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// Cluster is what a sync computes the rules from: every NetworkPolicy,
// Pod and Namespace of the cluster (selectors pick pods on every node).
type Cluster struct {
	Policies   []*networkingv1.NetworkPolicy
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
}

// Source gives a sync the cluster as the informers last saw it.
type Source interface {
	// Cluster returns ErrNotSynced until the caches are filled: rules
	// computed from half a cluster would open what a policy closes.
	Cluster() (*Cluster, error)
}

// ErrNotSynced says the caches are not filled yet.
var ErrNotSynced = errors.New("the policy caches have not synced yet")

// Listers is a Source over informer listers.
type Listers struct {
	Policies   networkinglisters.NetworkPolicyLister
	Pods       corelisters.PodLister
	Namespaces corelisters.NamespaceLister
	Synced     func() bool // the informers' HasSynced, together
}

var _ Source = Listers{}

// Cluster implements Source.
func (l Listers) Cluster() (*Cluster, error) {
	if l.Synced != nil && !l.Synced() {
		return nil, ErrNotSynced
	}
	var c Cluster
	var err error
	if c.Policies, err = l.Policies.List(labels.Everything()); err != nil {
		return nil, fmt.Errorf("list network policies: %w", err)
	}
	if c.Pods, err = l.Pods.List(labels.Everything()); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	if c.Namespaces, err = l.Namespaces.List(labels.Everything()); err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	return &c, nil
}

// podInfo is a pod that policies can select, with its addresses of the
// family being computed.
type podInfo struct {
	pod   *corev1.Pod
	ips   []netip.Addr
	local bool // on this node
}

// index is a Cluster read for one node and one family.
type index struct {
	fam      nft.Family
	nsLabels map[string]labels.Set
	nsLog    map[string]bool // namespaces whose denied connections are logged
	pods     []*podInfo
	byNS     map[string][]*podInfo
	problems []string // selectors that could not be read
}

func newIndex(c *Cluster, node string, fam nft.Family) *index {
	ix := &index{fam: fam, nsLabels: map[string]labels.Set{}, nsLog: map[string]bool{}, byNS: map[string][]*podInfo{}}
	for _, ns := range c.Namespaces {
		ix.nsLabels[ns.Name] = labels.Set(ns.Labels)
		ix.nsLog[ns.Name] = ns.Annotations[LogAnnotation] == "deny"
	}
	for _, p := range c.Pods {
		ips := podIPs(p, fam)
		if len(ips) == 0 {
			continue
		}
		pi := &podInfo{pod: p, ips: ips, local: p.Spec.NodeName == node}
		ix.pods = append(ix.pods, pi)
		ix.byNS[p.Namespace] = append(ix.byNS[p.Namespace], pi)
	}
	return ix
}

// podIPs are the addresses of family fam of a pod that policies apply to:
// none for a pod on the host's network (its address is the node's), or a
// pod that has finished (its address may be someone else's by now).
func podIPs(p *corev1.Pod, fam nft.Family) []netip.Addr {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil
	}
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil && fam.Has(a) {
			out = append(out, a.Unmap())
		}
	}
	if len(p.Status.PodIPs) == 0 && p.Status.PodIP != "" {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil && fam.Has(a) {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// LogAnnotation on a namespace, set to "deny", logs the connections denied
// to and from its pods (see Log).
const LogAnnotation = AnnotationPrefix + "log"

// logged reports whether a namespace's denied connections are logged.
func (ix *index) logged(ns string) bool { return ix.nsLog[ns] }

// namespaceLabels are a namespace's labels; one the cache does not hold
// (yet) has the label the API server gives every namespace, its name.
func (ix *index) namespaceLabels(ns string) labels.Set {
	if l, ok := ix.nsLabels[ns]; ok {
		return l
	}
	return labels.Set{corev1.LabelMetadataName: ns}
}

// selector reads a label selector; one that cannot be read selects
// nothing (the API server refuses such selectors, so this is a cache
// holding something odd) and is noted.
func (ix *index) selector(what string, s *metav1.LabelSelector) labels.Selector {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		ix.problems = append(ix.problems, fmt.Sprintf("%s: %v", what, err))
		return labels.Nothing()
	}
	return sel
}

// selected are the pods of namespace ns that sel selects.
func (ix *index) selected(ns string, sel labels.Selector) []*podInfo {
	var out []*podInfo
	for _, p := range ix.byNS[ns] {
		if sel.Matches(labels.Set(p.pod.Labels)) {
			out = append(out, p)
		}
	}
	return out
}
