package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"reflect"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/flatnet-io/flatnet/internal/admit"
	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/policy"
)

// policyInformers are what the policy engines read from the API server:
// every NetworkPolicy, Pod and Namespace of the cluster (selectors pick
// pods on every node), and a Pod looked up by name when the cache does
// not hold it yet.
type policyInformers struct {
	policies, pods, namespaces cache.SharedIndexInformer
	getPod                     func(ctx context.Context, namespace, name string) (*corev1.Pod, error)
	start                      func(stop <-chan struct{})
}

// newPolicyInformers makes the informers over client (the one place the
// policy wiring knows how the agent talks to the API server).
func newPolicyInformers(client *apiClient) policyInformers {
	inf := policyInformers{
		policies:   informer(client.networking, "networkpolicies", &networkingv1.NetworkPolicy{}),
		pods:       informer(client.core, "pods", &corev1.Pod{}),
		namespaces: informer(client.core, "namespaces", &corev1.Namespace{}),
		getPod: func(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
			pod := &corev1.Pod{}
			err := client.core.Get().Namespace(namespace).Resource("pods").Name(name).Do(ctx).Into(pod)
			return pod, err
		},
	}
	inf.start = func(stop <-chan struct{}) {
		for _, i := range []cache.SharedIndexInformer{inf.policies, inf.pods, inf.namespaces} {
			go i.Run(stop)
		}
	}
	return inf
}

// startPolicy runs NetworkPolicy enforcement: one engine per cluster CIDR
// family (package policy), each on its own runner, poked by the informers
// (their objects slimmed to what a sync reads). The engines write nothing
// until every informer has synced, so a restarted agent keeps the table
// its predecessor left.
func (a *Agent) startPolicy(ctx context.Context, inf policyInformers) error {
	if err := enableBridgeNetfilter(); err != nil {
		a.log.Warn("bridged pod traffic will not meet the policy table", "err", err)
	}
	if err := a.watchPolicyObjects(inf); err != nil {
		return err
	}
	src := policy.Listers{
		Policies:   networkinglisters.NewNetworkPolicyLister(inf.policies.GetIndexer()),
		Pods:       corelisters.NewPodLister(inf.pods.GetIndexer()),
		Namespaces: corelisters.NewNamespaceLister(inf.namespaces.GetIndexer()),
		Synced: func() bool {
			return inf.policies.HasSynced() && inf.pods.HasSynced() && inf.namespaces.HasSynced()
		},
	}
	for _, cidr := range a.o.ClusterCIDRs {
		fam := nft.FamilyOf(cidr.Addr())
		tables, err := a.newTables(fam, policy.Table)
		if err != nil {
			return fmt.Errorf("network policy: %w", err)
		}
		a.policies = append(a.policies, policy.NewEngine(fam, a.o.NodeName, tables, src,
			a.log.With("component", "policy", "family", fam.String())))
	}
	att, err := a.startGuard(ctx)
	if err != nil {
		return err
	}
	if err := a.serveAdmissions(ctx, inf, att); err != nil {
		return err
	}
	if err := a.registry.Register(policy.NewVerdicts(a.policies, a.guard)); err != nil {
		return fmt.Errorf("network policy metrics: %w", err)
	}
	if a.handle != nil { // the kernel's tables (not a test's Fakes)
		l := policy.NewLog(a.policies, a.log.With("component", "policy-log"))
		a.policyLog.Store(l)
		go func() {
			if err := l.Run(ctx); err != nil {
				a.log.Warn("denied connections will not be logged", "err", err)
			}
		}()
	}
	inf.start(ctx.Done())
	for _, e := range a.policies {
		go e.Run(ctx)
	}
	return nil
}

// startGuard gives the engines this node's record of attachments (read
// back from their tables, as a previous agent left them), and starts the
// anti-spoofing Guard over it.
func (a *Agent) startGuard(ctx context.Context) (*policy.Attachments, error) {
	att := policy.NewAttachments()
	if a.handle != nil {
		att.Links = a.linkNames
	}
	for _, e := range a.policies {
		e.UseAttachments(att)
		if a.o.PolicyRevoke && a.handle != nil {
			e.UseConntrack(policy.KernelConntrack{}, a.localAddrs)
		}
		if err := e.Restore(ctx); err != nil {
			a.log.Warn("attachments not read back before the anti-spoofing table's first sync", "err", err)
		}
	}
	tables, err := a.newTables(nft.Bridge, policy.GuardTable)
	if err != nil {
		return nil, fmt.Errorf("anti-spoofing: %w", err)
	}
	a.guard = policy.NewGuard(tables, att, a.log.With("component", "antispoof"))
	go a.guard.Run(ctx)
	return att, nil
}

// serveAdmissions answers the CNI plugin on --policy-socket (package
// admit; policy.Admitter says why a pod is then isolated from its first
// packet) and has the conflist name the socket, so that every ADD asks.
func (a *Agent) serveAdmissions(ctx context.Context, inf policyInformers, att *policy.Attachments) error {
	if a.o.PolicySocket == "" {
		return nil
	}
	pods := corelisters.NewPodLister(inf.pods.GetIndexer())
	adm := &policy.Admitter{Node: a.o.NodeName, CIDRs: a.o.ClusterCIDRs, Attachments: att, Engines: []policy.Committer{a.guard},
		Pod: func(ctx context.Context, namespace, name string, uid types.UID) (*corev1.Pod, error) {
			if p, err := pods.Pods(namespace).Get(name); err == nil && (uid == "" || p.UID == uid) {
				return p, nil
			}
			p, err := inf.getPod(ctx, namespace, name)
			if err != nil {
				return nil, err
			}
			slim, _ := policy.Slim(p)
			return slim.(*corev1.Pod), nil
		}}
	for _, e := range a.policies {
		adm.Engines = append(adm.Engines, e)
	}
	ln, err := admit.Listen(a.o.PolicySocket)
	if err != nil {
		return fmt.Errorf("network policy admissions: %w", err)
	}
	context.AfterFunc(ctx, func() { _ = ln.Close() })
	go admit.Serve(ctx, ln, adm.Handle, a.log.With("component", "policy-admission"))
	a.o.Conf.PolicySocket = a.o.PolicySocket
	a.log.Info("admitting new pods to the policy tables", "socket", a.o.PolicySocket)
	return nil
}

// linkNames are the names of the node's interfaces.
func (a *Agent) linkNames() (map[string]bool, error) {
	links, err := a.handle.LinkList()
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(links))
	for _, l := range links {
		out[l.Attrs().Name] = true
	}
	return out, nil
}

// watchPolicyObjects slims the informers' objects and has their changes
// poke every engine.
func (a *Agent) watchPolicyObjects(inf policyInformers) error {
	poke := func() {
		for _, e := range a.policies {
			e.Poke()
		}
	}
	for _, i := range []cache.SharedIndexInformer{inf.policies, inf.pods, inf.namespaces} {
		_ = i.SetTransform(policy.Slim)
		if _, err := i.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { poke() },
			DeleteFunc: func(any) { poke() },
			UpdateFunc: func(old, cur any) {
				if policyObjectChanged(old, cur) {
					poke()
				}
			},
		}); err != nil {
			return err
		}
	}
	return nil
}

// newTables opens an engine's table in the kernel (a test's Fake instead).
func (a *Agent) newTables(fam nft.Family, table string) (nft.Tables, error) {
	if a.tables != nil {
		return a.tables(fam, table)
	}
	return nft.New(fam, table)
}

// policyObjectChanged reports whether an informer's update changes what a
// policy sync reads (a Pod's status heartbeat, say, does not: its slim
// copies differ only in resourceVersion).
func policyObjectChanged(old, cur any) bool {
	strip := func(o any) any {
		switch v := o.(type) {
		case *corev1.Pod:
			c := *v
			c.ResourceVersion = ""
			return &c
		case *corev1.Namespace:
			c := *v
			c.ResourceVersion = ""
			return &c
		}
		return o
	}
	return !reflect.DeepEqual(strip(old), strip(cur))
}

// localAddrs are the node's own addresses (flows to or from them are not
// the policy table's to judge).
func (a *Agent) localAddrs() (map[netip.Addr]bool, error) {
	addrs, err := a.handle.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Addr]bool, len(addrs))
	for _, ad := range addrs {
		if ip, ok := netip.AddrFromSlice(ad.IP); ok {
			out[ip.Unmap()] = true
		}
	}
	return out, nil
}

// servePolicyLog answers the recent denied connections (`flatnet policy
// log` reads them), as JSON.
func (a *Agent) servePolicyLog(w http.ResponseWriter, r *http.Request) {
	l := a.policyLog.Load()
	if l == nil {
		http.Error(w, "network policy is off", http.StatusNotFound)
		return
	}
	l.ServeHTTP(w, r)
}
