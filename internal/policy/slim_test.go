package policy_test

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/policy"
)

// Slim objects give every node the same elements as the full ones, and
// keep none of what a sync does not read.
func TestSlimObjectsComputeTheSame(t *testing.T) {
	full := &policy.Cluster{Pods: pods(), Namespaces: namespaces()}
	for _, pc := range cases {
		full.Policies = append(full.Policies, pc.policies...)
	}
	bulk := []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}}
	for _, p := range full.Pods {
		p.ManagedFields, p.Annotations = bulk, map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}"}
		p.Spec.Volumes = []corev1.Volume{{Name: "data"}}
		p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "A", Value: "b"}}
		p.Spec.Containers[0].Image = "registry.k8s.io/e2e-test-images/agnhost:2.53"
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	}
	for _, n := range full.Namespaces {
		n.ManagedFields, n.Annotations = bulk, map[string]string{"other": "x", policy.AnnotationPrefix + "log": "deny"}
	}
	for _, np := range full.Policies {
		np.ManagedFields, np.Annotations = bulk, map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}"}
	}
	slim := &policy.Cluster{}
	for _, p := range full.Pods {
		o, _ := policy.Slim(p.DeepCopy())
		slim.Pods = append(slim.Pods, o.(*corev1.Pod))
	}
	for _, n := range full.Namespaces {
		o, _ := policy.Slim(n.DeepCopy())
		slim.Namespaces = append(slim.Namespaces, o.(*corev1.Namespace))
	}
	for _, np := range full.Policies {
		o, _ := policy.Slim(np.DeepCopy())
		slim.Policies = append(slim.Policies, o.(*networkingv1.NetworkPolicy))
	}
	for _, n := range nodes {
		for _, fam := range []nft.Family{nft.IPv4, nft.IPv6} {
			want, got := policy.Compute(full, n.name, fam).Elements(), policy.Compute(slim, n.name, fam).Elements()
			if !reflect.DeepEqual(want, got) {
				t.Errorf("%s %s: slim objects compute other elements", n.name, fam)
			}
		}
	}
	p, ns, np := slim.Pods[0], slim.Namespaces[0], slim.Policies[0]
	if p.ManagedFields != nil || p.Annotations != nil || p.Spec.Volumes != nil || p.Spec.Containers[0].Env != nil ||
		p.Spec.Containers[0].Image != "" || p.Status.Conditions != nil {
		t.Errorf("a slim pod keeps what no sync reads: %+v", p)
	}
	if ns.ManagedFields != nil || len(ns.Annotations) != 1 || ns.Annotations[policy.AnnotationPrefix+"log"] != "deny" {
		t.Errorf("a slim namespace: %+v", ns.ObjectMeta)
	}
	if np.ManagedFields != nil || np.Annotations != nil {
		t.Errorf("a slim policy: %+v", np.ObjectMeta)
	}
}
