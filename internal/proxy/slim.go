package proxy

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// What the proxy reads of Services and EndpointSlices. A Service or
// EndpointSlice from the API server carries much the proxy never reads:
// managed fields, labels, annotations (kubectl's last-applied
// configuration is a copy of the whole object), selectors, endpoints'
// target references. SlimService and SlimEndpointSlice are transforms
// (cache.TransformFunc) that keep exactly what the proxier reads: an
// allow-list, so that a field the API gains later is not kept by default.
// flatnetd keeps no object once the proxier has read it, but a reflector
// holds every object of its first list until the list is complete, and
// trims them with these. slim_test.go checks that the proxier derives the
// same ports, endpoints and table from a slim object as from the full one.

// SlimService returns what the proxier reads of a Service: its identity
// (namespace, name, UID and resourceVersion: for Events on it, and a store
// tells a change from a resync by the resourceVersion; its creation time,
// for address ownership), the spec fields that make its ports and the
// load-balancer ingress IPs. Other objects pass unchanged.
// The Service is trimmed in place: it is the reflector's fresh copy, and
// a new one would leave the heap's spans half empty (a copy of every
// object allocated between objects that die).
func SlimService(obj any) (any, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	s := &svc.Spec
	svc.ObjectMeta = slimMeta(&svc.ObjectMeta)
	svc.Spec = corev1.ServiceSpec{
		Type: s.Type, ClusterIP: s.ClusterIP, ClusterIPs: s.ClusterIPs, ExternalIPs: s.ExternalIPs,
		LoadBalancerSourceRanges: s.LoadBalancerSourceRanges, SessionAffinity: s.SessionAffinity,
		SessionAffinityConfig: s.SessionAffinityConfig, InternalTrafficPolicy: s.InternalTrafficPolicy,
		ExternalTrafficPolicy: s.ExternalTrafficPolicy, HealthCheckNodePort: s.HealthCheckNodePort,
		TrafficDistribution: s.TrafficDistribution, Ports: s.Ports,
	}
	for i, p := range s.Ports {
		s.Ports[i] = corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port, NodePort: p.NodePort}
	}
	ingress := svc.Status.LoadBalancer.Ingress
	svc.Status = corev1.ServiceStatus{}
	for _, ing := range ingress {
		if ing.IP != "" {
			svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ing.IP})
		}
	}
	return svc, nil
}

// SlimEndpointSlice returns what the proxier reads of an EndpointSlice: its
// identity, the label naming its Service, the annotation with the time of
// the change that triggered it (for the programming-latency metric), its
// address type and ports, and of each endpoint its addresses, conditions,
// node and zone hints. Other objects pass unchanged. The slice is trimmed
// in place, as a Service is.
func SlimEndpointSlice(obj any) (any, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	labels, annotations := sl.Labels, sl.Annotations
	sl.ObjectMeta = slimMeta(&sl.ObjectMeta)
	if name, ok := labels[discoveryv1.LabelServiceName]; ok {
		sl.Labels = keepOne(labels, discoveryv1.LabelServiceName, name)
	}
	if t, ok := annotations[corev1.EndpointsLastChangeTriggerTime]; ok {
		sl.Annotations = keepOne(annotations, corev1.EndpointsLastChangeTriggerTime, t)
	}
	for i, p := range sl.Ports {
		sl.Ports[i] = discoveryv1.EndpointPort{Name: p.Name, Protocol: p.Protocol, Port: p.Port}
	}
	for i, e := range sl.Endpoints {
		sl.Endpoints[i] = discoveryv1.Endpoint{Addresses: e.Addresses, Conditions: e.Conditions, NodeName: e.NodeName}
		if e.Hints != nil && len(e.Hints.ForZones) > 0 {
			sl.Endpoints[i].Hints = &discoveryv1.EndpointHints{ForZones: e.Hints.ForZones}
		}
	}
	return sl, nil
}

// keepOne is m with only key k (value v). A small map (one group of 8
// slots) keeps its memory whatever it holds, so the other keys are deleted
// from it; a larger one is replaced.
func keepOne(m map[string]string, k, v string) map[string]string {
	if len(m) > 8 {
		return map[string]string{k: v}
	}
	for key := range m {
		if key != k {
			delete(m, key)
		}
	}
	return m
}

// slimMeta keeps an object's identity: namespace, name, UID,
// resourceVersion and creation time.
func slimMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: m.Namespace, Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion,
		CreationTimestamp: m.CreationTimestamp}
}
