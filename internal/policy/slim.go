package policy

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AnnotationPrefix is the prefix of the namespace annotations this package
// reads (the only annotations a slim Namespace keeps).
const AnnotationPrefix = "policy.flatnet.io/"

// Slim trims an informer's fresh object, in place, to what a sync reads
// (an informer transform: every Pod of the cluster is cached, so the
// bytes of specs the engine never reads would dominate the agent's
// memory):
//   - a Pod keeps its identity, labels, node, host-network flag, its
//     containers' and init containers' names, ports and restart policies,
//     its phase and addresses;
//   - a Namespace its name, labels and this package's annotations;
//   - a NetworkPolicy loses its managedFields and annotations (kubectl's
//     last-applied copy of the spec among them).
//
// Anything else is returned as it is.
func Slim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		slimPod(o)
	case *corev1.Namespace:
		o.ObjectMeta = slimMeta(o.ObjectMeta)
		for k := range o.Annotations {
			if !strings.HasPrefix(k, AnnotationPrefix) {
				delete(o.Annotations, k)
			}
		}
		o.Spec, o.Status = corev1.NamespaceSpec{}, corev1.NamespaceStatus{Phase: o.Status.Phase}
	case *networkingv1.NetworkPolicy:
		o.ManagedFields, o.Annotations = nil, nil
	}
	return obj, nil
}

func slimPod(p *corev1.Pod) {
	p.ObjectMeta = slimMeta(p.ObjectMeta)
	p.Annotations = nil
	spec := corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork,
		Containers: slimContainers(p.Spec.Containers), InitContainers: slimContainers(p.Spec.InitContainers)}
	p.Spec = spec
	p.Status = corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs}
}

func slimContainers(cs []corev1.Container) []corev1.Container {
	if len(cs) == 0 {
		return nil
	}
	out := make([]corev1.Container, len(cs))
	for i, c := range cs {
		out[i] = corev1.Container{Name: c.Name, Ports: c.Ports, RestartPolicy: c.RestartPolicy}
	}
	return out
}

// slimMeta keeps an object's identity, labels and annotations.
func slimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		Labels: m.Labels, Annotations: m.Annotations, DeletionTimestamp: m.DeletionTimestamp}
}
