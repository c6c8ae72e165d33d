package policy_test

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/flatnet-io/flatnet/internal/cni"
	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/ipam"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/podnet"
	"github.com/flatnet-io/flatnet/internal/policy"
)

// add runs ADD and returns the pod's addresses.
func add(t *testing.T, rt *cniruntime.Runtime, p cniruntime.Pod) []netip.Addr {
	t.Helper()
	res, err := rt.Add(context.Background(), p)
	if err != nil {
		t.Fatalf("ADD %s/%s: %v", p.Namespace, p.Name, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, ip := range r.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		out = append(out, a.Unmap())
	}
	return out
}

// A pod that a policy selects is isolated when its ADD returns, though no
// address of it ever reaches the cluster (its status is never written
// here): the first connection to it, right after ADD, is dropped. A pod
// attached by a conflist without the policy section is reachable in the
// same state (the window this closes). After the agent restarts (a fresh
// record, read back from its tables), the pod is still isolated; once the
// policy is deleted it is reachable, so the drops were the policy's.
func TestIsolatedFromTheFirstPacket(t *testing.T) {
	n := newNode(t)
	n.cluster.set(func(c *policyCluster) { c.Policies = []*networkingv1.NetworkPolicy{denyIngress("x")} })
	n.startAgent()
	admitting, plain := n.runtime(n.admitting("")), n.runtime("")
	client := n.newPod("y", "client")
	add(t, admitting, client)
	for _, step := range []struct {
		name string
		rt   *cniruntime.Runtime
		want bool
	}{{"admitted", admitting, false}, {"plain", plain, true}} {
		p := n.newPod("x", step.name)
		ips := add(t, step.rt, p)
		serve(t, p)
		for _, ip := range ips {
			if got := reaches(client, ip); got != step.want {
				t.Errorf("pod x/%s (%s conflist) right after ADD: y/client reaches %s: %v, want %v", step.name, step.name, ip, got, step.want)
			}
		}
	}
	n.stopAgent()
	n.startAgent()
	ips := n.agentIPs(t, "admitted")
	if len(ips) != 2 {
		t.Fatalf("the restarted agent read back %v for x/admitted", ips)
	}
	commit(t, n)
	for _, ip := range ips {
		if reaches(client, ip) {
			t.Errorf("after a restart y/client reaches x/admitted at %s", ip)
		}
	}
	n.cluster.set(func(c *policyCluster) { c.Policies = nil })
	commit(t, n)
	for _, ip := range ips {
		if !reaches(client, ip) {
			t.Errorf("with the policy deleted y/client does not reach x/admitted at %s", ip)
		}
	}
}

type policyCluster = policy.Cluster

// agentIPs are the addresses the agent's record holds for pod name.
func (n *node) agentIPs(t *testing.T, name string) []netip.Addr {
	t.Helper()
	commit(t, n) // the first sync reads the record back
	for _, a := range n.agent.att.List() {
		if string(a.UID) == "uid-"+name {
			return a.IPs
		}
	}
	return nil
}

// commit waits until every engine has committed the cluster as it is.
func commit(t *testing.T, n *node) {
	t.Helper()
	for _, e := range n.agent.engines {
		ctx, cancel := context.WithTimeout(context.Background(), 5e9)
		err := e.Commit(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Without an agent that answers, ADD fails (try again later) and leaves
// nothing behind: no veth, no address held. With failOpen it goes on.
func TestFailsClosed(t *testing.T) {
	n := newNode(t)
	closed, open := n.runtime(n.admitting("")), n.runtime(n.admitting(`, "failOpen": true`))
	p := n.newPod("x", "early")
	_, err := closed.Add(context.Background(), p)
	var cerr *types.Error
	if !errors.As(err, &cerr) || cerr.Code != types.ErrTryAgainLater {
		t.Fatalf("ADD without an agent: %v, want code %d", err, types.ErrTryAgainLater)
	}
	h, herr := netns.Handle(n.ns)
	if herr != nil {
		t.Fatal(herr)
	}
	defer h.Close()
	if _, err := h.LinkByName(podnet.HostVethName("fntest", p.ID, "eth0")); err == nil {
		t.Error("the failed ADD left its veth")
	}
	if held := n.held(t, p); len(held) > 0 {
		t.Errorf("the failed ADD left addresses allocated: %v", held)
	}
	q := n.newPod("x", "open")
	if ips := add(t, open, q); len(ips) != 2 {
		t.Errorf("ADD with failOpen and no agent: %v", ips)
	}
	if err := open.Del(context.Background(), q); err != nil {
		t.Fatal(err)
	}
	_ = closed.Del(context.Background(), p)
}

// held are the addresses the IPAM store holds for pod p.
func (n *node) held(t *testing.T, p cniruntime.Pod) []ipam.Allocation {
	t.Helper()
	cfg, err := cni.ParseConfig([]byte(`{"name": "fntest", "ipam": {"ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd00:99::/64"}]], "dataDir": "` +
		filepath.Join(n.dir, "ipam") + `"}}`))
	if err != nil {
		t.Fatal(err)
	}
	alloc, err := ipam.New(cfg.IPAM)
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	got, err := alloc.Lookup(ipam.Owner{ContainerID: p.ID, IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	return got
}
