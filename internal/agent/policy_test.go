package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flatnet-io/flatnet/internal/admit"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/policy"
	"github.com/flatnet-io/flatnet/internal/sysctl"
)

func testPod(ns, name, node string, ips ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return p
}

func testNamespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelMetadataName: name}}}
}

// policyAgent is an agent of node n1 on a dual-stack cluster whose policy
// engines write into Fakes, wired to a fake API server holding objs.
func policyAgent(t *testing.T, objs ...any) (*Agent, *fake.Clientset, map[nft.Family]*lockedFake) {
	t.Helper()
	a := &Agent{o: Defaults(), metrics: newMetrics(), log: slog.New(slog.NewTextHandler(io.Discard, nil)), registry: prometheus.NewRegistry()}
	a.o.NodeName = "n1"
	a.o.PolicySocket = "" // admissions: TestAdmissionOverTheSocket, in a namespace of its own
	a.o.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/48")}
	fakes := map[nft.Family]*lockedFake{}
	a.tables = func(fam nft.Family, table string) (nft.Tables, error) {
		fakes[fam] = &lockedFake{Fake: nft.NewFake(fam, table)}
		return fakes[fam], nil
	}
	client := fake.NewClientset()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *corev1.Pod:
			_, err = client.CoreV1().Pods(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
		case *corev1.Namespace:
			_, err = client.CoreV1().Namespaces().Create(context.Background(), o, metav1.CreateOptions{})
		case *networkingv1.NetworkPolicy:
			_, err = client.NetworkingV1().NetworkPolicies(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return a, client, fakes
}

// lockedFake is a Fake that a test reads while an engine writes it.
type lockedFake struct {
	mu sync.Mutex
	*nft.Fake
}

func (f *lockedFake) Run(ctx context.Context, tx *nft.Tx) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Fake.Run(ctx, tx)
}

func isolated(f *lockedFake) []string { return f.keys("ingress-isolated") }

// keys are the keys of a set's elements.
func (f *lockedFake) keys(set string) []string { return f.Keys(set, false) }

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// flatnetd wires the policy engines to the API server: one per family,
// ready once each has synced, following policies, pods and namespaces as
// they change.
func TestPolicyEnginesFollowTheAPIServer(t *testing.T) {
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "deny"}}
	a, client, fakes := policyAgent(t, testNamespace("x"), deny,
		testPod("x", "a", "n1", "10.244.0.5", "fd00:244::5"), testPod("x", "far", "n2", "10.244.1.5", "fd00:244:0:1::5"))
	a.installed.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := a.startPolicy(ctx, fakePolicyInformers(client)); err != nil {
		t.Fatal(err)
	}
	if len(a.policies) != 2 || len(fakes) != 3 || fakes[nft.Bridge] == nil || a.guard == nil {
		t.Fatalf("%d engines, %d tables; want one of each per family and the anti-spoofing table", len(a.policies), len(fakes))
	}
	eventually(t, "ready", func() bool { return a.ready() == nil })
	if got := isolated(fakes[nft.IPv4]); !slices.Equal(got, []string{"10.244.0.5"}) {
		t.Errorf("IPv4 isolated %v, want this node's pod only", got)
	}
	if got := isolated(fakes[nft.IPv6]); !slices.Equal(got, []string{"fd00:244::5"}) {
		t.Errorf("IPv6 isolated %v", got)
	}
	if _, err := client.CoreV1().Pods("x").Create(ctx, testPod("x", "b", "n1", "10.244.0.6"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a new pod isolated", func() bool { return slices.Equal(isolated(fakes[nft.IPv4]), []string{"10.244.0.5", "10.244.0.6"}) })
	if err := client.NetworkingV1().NetworkPolicies("x").Delete(ctx, "deny", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "no pod isolated once the policy is gone", func() bool { return len(isolated(fakes[nft.IPv4])) == 0 })
	if err := a.live(time.Now()); err != nil {
		t.Errorf("not live: %v", err)
	}
	fams, err := a.registry.Gather()
	names := map[string]bool{}
	for _, f := range fams {
		names[f.GetName()] = true
	}
	if err != nil || !names["flatnet_policy_revoked_flows_total"] || !names["flatnet_policy_spoofed_packets_total"] {
		t.Errorf("the policy metrics are not served: %v %v", names, err)
	}
}

// A policy engine that has not committed its table keeps the node unready.
func TestNotReadyUntilPolicySynced(t *testing.T) {
	a := &Agent{o: Defaults(), metrics: newMetrics()}
	a.installed.Store(true)
	a.policies = []*policy.Engine{policy.NewEngine(nft.IPv4, "n1", nft.NewFake(nft.IPv4, policy.Table), unsyncedSource{}, slog.New(slog.NewTextHandler(io.Discard, nil)))}
	if err := a.policies[0].Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a.ready() == nil {
		t.Error("ready while the policy caches have not synced")
	}
}

type unsyncedSource struct{}

func (unsyncedSource) Cluster() (*policy.Cluster, error) { return nil, policy.ErrNotSynced }

// Updates that change nothing a policy sync reads (a status heartbeat)
// poke no engine; label, address and phase changes do.
func TestPolicyObjectChanged(t *testing.T) {
	p := testPod("x", "a", "n1", "10.244.0.5")
	p.ResourceVersion = "1"
	beat := p.DeepCopy()
	beat.ResourceVersion = "2"
	if policyObjectChanged(p, beat) {
		t.Error("a new resourceVersion alone counts as a change")
	}
	for name, mod := range map[string]func(*corev1.Pod){
		"label":   func(p *corev1.Pod) { p.Labels["app"] = "b" },
		"address": func(p *corev1.Pod) { p.Status.PodIPs = nil },
		"phase":   func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded },
	} {
		q := p.DeepCopy()
		mod(q)
		if !policyObjectChanged(p, q) {
			t.Errorf("a new %s is not a change", name)
		}
	}
}

// With the policy engines on (and the proxy off), bridged traffic is sent
// through the IP hooks, so that pods on one bridge meet the policy table:
// checked in a throwaway namespace where it was off.
func TestPolicyTurnsOnBridgeNetfilter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace)")
	}
	const knob = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	if _, err := os.Stat(knob); err != nil {
		t.Skip("needs br_netfilter")
	}
	name := fmt.Sprintf("fn-t%d-agent-br", os.Getpid())
	path, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = netns.Delete(name) }()
	a, client, _ := policyAgent(t)
	a.o.Proxy = false
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got []byte
	err = netns.Do(path, func() error {
		if err := sysctl.Ensure(knob, "0"); err != nil {
			return err
		}
		if err := a.startPolicy(ctx, fakePolicyInformers(client)); err != nil {
			return err
		}
		got, err = os.ReadFile(knob)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != "1" {
		t.Errorf("%s = %s in the node's namespace, want 1", knob, got)
	}
}

// The plugin's question over the abstract socket of the node's namespace:
// a new pod without an address in the API server is isolated, and its
// port guarded, when the answer comes; the conflist flatnetd writes names
// the socket.
func TestAdmissionOverTheSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace)")
	}
	name := fmt.Sprintf("fn-t%d-agent-adm", os.Getpid())
	path, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = netns.Delete(name) }()
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "deny"}}
	a, client, fakes := policyAgent(t, testNamespace("x"), deny, testPod("x", "new", "n1"))
	a.o.PolicySocket = "@" + name
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req := admit.Request{Op: admit.Add, Namespace: "x", Name: "new", UID: "uid-new", ContainerID: "c", IfName: "eth0",
		HostVeth: "fn0000", IPs: []netip.Addr{netip.MustParseAddr("10.244.0.9"), netip.MustParseAddr("fd00:244::9")}}
	err = netns.Do(path, func() error {
		if err := a.startPolicy(ctx, fakePolicyInformers(client)); err != nil {
			return err
		}
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		defer acancel()
		return admit.Ask(actx, a.o.PolicySocket, req)
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := isolated(fakes[nft.IPv4]); !slices.Equal(got, []string{"10.244.0.9"}) {
		t.Errorf("IPv4 isolated %v when the plugin is answered", got)
	}
	if got := isolated(fakes[nft.IPv6]); !slices.Equal(got, []string{"fd00:244::9"}) {
		t.Errorf("IPv6 isolated %v when the plugin is answered", got)
	}
	if got := fakes[nft.Bridge].keys("sources-v4"); !slices.Equal(got, []string{"fn0000 . 10.244.0.9"}) {
		t.Errorf("anti-spoofing sources %v when the plugin is answered", got)
	}
	if a.o.Conf.PolicySocket != a.o.PolicySocket {
		t.Errorf("the conflist would name socket %q", a.o.Conf.PolicySocket)
	}
}

// /policy/log serves the recent denied connections (none yet here), and
// says so when policy is off.
func TestPolicyLogEndpoint(t *testing.T) {
	a := &Agent{o: Defaults(), metrics: newMetrics()}
	get := func() (int, string) {
		rec := httptest.NewRecorder()
		a.healthHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/policy/log", nil))
		return rec.Code, strings.TrimSpace(rec.Body.String())
	}
	if code, _ := get(); code != http.StatusNotFound {
		t.Errorf("policy off: %d", code)
	}
	a.policyLog.Store(policy.NewLog(nil, slog.New(slog.NewTextHandler(io.Discard, nil))))
	if code, body := get(); code != http.StatusOK || body != "[]" {
		t.Errorf("policy on: %d %q", code, body)
	}
}

// fakePolicyInformers are the policy informers over a fake clientset, as
// client-go's informer factory makes them (flatnetd makes them over its
// own REST clients: newPolicyInformers).
func fakePolicyInformers(client kubernetes.Interface) policyInformers {
	f := informers.NewSharedInformerFactory(client, 0)
	return policyInformers{
		policies:   f.Networking().V1().NetworkPolicies().Informer(),
		pods:       f.Core().V1().Pods().Informer(),
		namespaces: f.Core().V1().Namespaces().Informer(),
		getPod: func(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
			return client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		},
		start: f.Start,
	}
}
