package policy_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/flatnet-io/flatnet/internal/policy"
)

// A connection denied to a pod of a namespace annotated
// policy.flatnet.io/log: "deny" is logged with its pods and the policy
// that isolates the pod, over IPv4 and IPv6; one denied in a namespace
// without the annotation is not.
func TestDeniedConnectionsLogged(t *testing.T) {
	n := newNode(t)
	n.cluster.set(func(c *policyCluster) {
		c.Namespaces = append(c.Namespaces, namespace("z"))
		c.Namespaces[0].Annotations = map[string]string{policy.LogAnnotation: "deny"} // x
		c.Policies = []*networkingv1.NetworkPolicy{denyIngress("x"), denyIngress("z")}
	})
	n.startAgent()
	rt := n.runtime(n.admitting(""))
	client, server, quiet := n.newPod("y", "client"), n.newPod("x", "server"), n.newPod("z", "quiet")
	add(t, rt, client)
	ips := append(add(t, rt, server), add(t, rt, quiet)...)
	for _, ip := range ips {
		if reaches(client, ip) {
			t.Errorf("y/client reaches %s", ip)
		}
	}
	var got []policy.Denial
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got = n.agent.log.Recent(); len(got) >= 2 {
			break
		}
	}
	families := map[bool]bool{}
	for _, d := range got {
		if d.DstPod != "x/server" || d.SrcPod != "y/client" || d.Direction != "ingress" || d.Protocol != "TCP" ||
			!slices.Equal(d.Policies, []string{"x/deny"}) || !strings.HasSuffix(d.Dst, ":80") {
			t.Errorf("logged %+v", d)
		}
		families[strings.Contains(d.Src, "[")] = true
	}
	if !families[true] || !families[false] {
		t.Errorf("the denials logged are not of both families: %+v", got)
	}
}
