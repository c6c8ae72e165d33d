// Package policy_test runs flatnet-cni and the policy engines together
// against the real kernel: a node namespace whose pods the plugin wires
// through libcni (as containerd would), the engines of both families on
// their runners inside that namespace, and the admission server the plugin
// asks, as flatnetd wires them. Root is needed; without it every test
// skips with the reason.
package policy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/vishvananda/netlink"

	"github.com/flatnet-io/flatnet/internal/admit"
	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/cnitest"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/policy"
	"github.com/flatnet-io/flatnet/internal/sysctl"
)

var suite = cnitest.NewSuite("t")

func TestMain(m *testing.M) { os.Exit(suite.Main(m)) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// cluster is a mutable policy.Source: what the API server would say.
type cluster struct {
	mu sync.Mutex
	c  policy.Cluster
}

func (c *cluster) Cluster() (*policy.Cluster, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := c.c
	return &cp, nil
}

func (c *cluster) set(f func(*policy.Cluster)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.c)
}

// node is a node namespace with the plugin's conflist (with or without
// the policy section), the policy engines and the admission server.
type node struct {
	t       *testing.T
	name    string
	ns      string
	dir     string
	socket  string // abstract, in the node's namespace
	cluster *cluster
	agent   *agent
	revoke  bool // the engines cut established connections a change denies
}

// agent is what flatnetd runs for policy: engines, the anti-spoofing
// guard and the admission server.
type agent struct {
	att     *policy.Attachments
	engines []*policy.Engine
	guard   *policy.Guard
	log     *policy.Log
	stop    func()
}

func newNode(t *testing.T) *node {
	t.Helper()
	suite.Require(t)
	n := &node{t: t, name: suite.NewName(), dir: t.TempDir(), cluster: &cluster{}}
	n.socket = "@" + n.name + "-policy"
	var err error
	if n.ns, err = netns.Create(n.name + "-node"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Delete(n.name + "-node") })
	for _, s := range []string{"/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables"} {
		if err := sysctl.EnsureIn(n.ns, s, "1"); err != nil {
			t.Skipf("needs br_netfilter: %v", err)
		}
	}
	n.cluster.c.Namespaces = []*corev1.Namespace{namespace("x"), namespace("y")}
	return n
}

func namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelMetadataName: name}}}
}

// runtime is a libcni runtime of the node; policy is the conflist's
// "policy" section ("" for none).
func (n *node) runtime(policySection string) *cniruntime.Runtime {
	n.t.Helper()
	entry := fmt.Sprintf(`{"type": "flatnet-cni", "bridge": "fn0", "ipam": {"ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd00:99::/64"}]], "dataDir": %q}%s}`,
		filepath.Join(n.dir, "ipam"), policySection)
	conflist := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "fntest", "plugins": [%s]}`, entry)
	rt, err := cniruntime.New(n.ns, []string{suite.PluginDir}, filepath.Join(n.dir, "cache"), []byte(conflist))
	if err != nil {
		n.t.Fatal(err)
	}
	return rt
}

// admitting is the policy section that asks this node's agent.
func (n *node) admitting(extra string) string {
	return fmt.Sprintf(`, "policy": {"socket": %q, "timeout": "3s"%s}`, n.socket, extra)
}

// startAgent starts the engines (a fresh record of attachments, read back
// from the tables like a restarted flatnetd's) and the admission server.
func (n *node) startAgent() {
	n.t.Helper()
	a := &agent{att: policy.NewAttachments()}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var ln net.Listener
	err := netns.Do(n.ns, func() (err error) {
		for _, fam := range []nft.Family{nft.IPv4, nft.IPv6} {
			tables, err := nft.New(fam, policy.Table)
			if err != nil {
				return err
			}
			e := policy.NewEngine(fam, "node", tables, n.cluster, quiet)
			e.UseAttachments(a.att)
			if n.revoke {
				e.UseConntrack(policy.KernelConntrack{}, n.localAddrs)
			}
			a.engines = append(a.engines, e)
		}
		for _, e := range a.engines {
			if err := e.Restore(ctx); err != nil {
				return err
			}
		}
		tables, err := nft.New(nft.Bridge, policy.GuardTable)
		if err != nil {
			return err
		}
		a.guard = policy.NewGuard(tables, a.att, quiet)
		ln, err = admit.Listen(n.socket)
		return err
	})
	if err != nil {
		n.t.Fatal(err)
	}
	a.log = policy.NewLog(a.engines, quiet)
	runners := []interface{ Run(context.Context) }{a.guard, logRunner{a.log}}
	committers := []policy.Committer{a.guard}
	for _, e := range a.engines {
		runners, committers = append(runners, e), append(committers, e)
	}
	for _, r := range runners {
		wg.Add(1)
		go func() { // the runner in the node's namespace: its syncs talk netlink there
			defer wg.Done()
			_ = netns.Do(n.ns, func() error { r.Run(ctx); return nil })
		}()
	}
	adm := &policy.Admitter{Node: "node", Attachments: a.att, Engines: committers,
		CIDRs: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24"), netip.MustParsePrefix("fd00:99::/64")},
		Pod:   n.pod}
	wg.Add(1)
	go func() { defer wg.Done(); admit.Serve(ctx, ln, adm.Handle, quiet) }()
	a.stop = func() { cancel(); ln.Close(); wg.Wait() }
	n.agent = a
	n.t.Cleanup(func() { n.stopAgent() })
}

func (n *node) stopAgent() {
	if n.agent != nil {
		n.agent.stop()
		n.agent = nil
	}
}

// localAddrs are the node's addresses.
func (n *node) localAddrs() (map[netip.Addr]bool, error) {
	h, err := netns.Handle(n.ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]bool{}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out[ip.Unmap()] = true
		}
	}
	return out, nil
}

type logRunner struct{ l *policy.Log }

func (r logRunner) Run(ctx context.Context) { _ = r.l.Run(ctx) }

// pod is the Pod lookup of the Admitter: the cluster's.
func (n *node) pod(_ context.Context, namespace, name string, _ types.UID) (*corev1.Pod, error) {
	c, _ := n.cluster.Cluster()
	for _, p := range c.Pods {
		if p.Namespace == namespace && p.Name == name {
			return p, nil
		}
	}
	return nil, fmt.Errorf("pod %s/%s not found", namespace, name)
}

// newPod makes a pod's namespace and its object in the cluster, scheduled
// to the node, without an address (as the API server has it at ADD).
func (n *node) newPod(namespace, name string) cniruntime.Pod {
	n.t.Helper()
	path, err := netns.Create(n.name + "-" + name)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { _ = netns.Delete(n.name + "-" + name) })
	uid := "uid-" + name
	n.cluster.set(func(c *policy.Cluster) {
		c.Pods = append(c.Pods, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: types.UID(uid),
			Labels: map[string]string{"pod": name}}, Spec: corev1.PodSpec{NodeName: "node"}, Status: corev1.PodStatus{Phase: corev1.PodPending}})
	})
	return cniruntime.Pod{ID: "ctr-" + name, NetNS: path, Namespace: namespace, Name: name, UID: uid}
}

// denyIngress isolates every pod of namespace ns for ingress.
func denyIngress(ns string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "deny"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
}

// serve answers TCP port 80 in the pod's namespace until the test ends.
func serve(t *testing.T, p cniruntime.Pod) {
	t.Helper()
	var ln net.Listener
	if err := netns.Do(p.NetNS, func() (err error) { ln, err = net.Listen("tcp", ":80"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// reaches reports whether a TCP connect from pod src to dst:80 succeeds.
func reaches(src cniruntime.Pod, dst netip.Addr) bool {
	return reachesAddr(src, netip.AddrPortFrom(dst, 80))
}

type cniPod = cniruntime.Pod

func reachesAddr(src cniruntime.Pod, dst netip.AddrPort) bool {
	err := netns.Do(src.NetNS, func() error {
		c, err := net.DialTimeout("tcp", dst.String(), 700*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	})
	return err == nil
}
