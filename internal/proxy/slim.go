package proxy

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// What the proxy reads of Services and EndpointSlices. An informer keeps
// every object it watches for as long as it exists, and a Service or
// EndpointSlice from the API server carries much the proxy never reads:
// managed fields, labels, annotations (kubectl's last-applied
// configuration is a copy of the whole object), selectors, endpoints'
// target references. SlimService and SlimEndpointSlice are informer
// transforms (cache.TransformFunc) that keep exactly what the proxier
// reads, so the cache holds no more: an allow-list, so that a field the
// API gains later is not kept by default. slim_test.go checks that the
// proxier derives the same ports and endpoints from a slim object as from
// the full one.

// SlimService returns what the proxier reads of a Service: its identity
// (namespace, name, UID and resourceVersion, for Events on it; its
// creation time, for address ownership), the spec fields that make its
// ports and the load-balancer ingress IPs. Other objects pass unchanged.
func SlimService(obj any) (any, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	s := &svc.Spec
	out := &corev1.Service{
		ObjectMeta: slimMeta(&svc.ObjectMeta),
		Spec: corev1.ServiceSpec{
			Type: s.Type, ClusterIP: s.ClusterIP, ClusterIPs: s.ClusterIPs, ExternalIPs: s.ExternalIPs,
			LoadBalancerSourceRanges: s.LoadBalancerSourceRanges, SessionAffinity: s.SessionAffinity,
			SessionAffinityConfig: s.SessionAffinityConfig, InternalTrafficPolicy: s.InternalTrafficPolicy,
			ExternalTrafficPolicy: s.ExternalTrafficPolicy, HealthCheckNodePort: s.HealthCheckNodePort,
			TrafficDistribution: s.TrafficDistribution,
		},
	}
	if len(s.Ports) > 0 {
		out.Spec.Ports = make([]corev1.ServicePort, len(s.Ports))
		for i, p := range s.Ports {
			out.Spec.Ports[i] = corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port, NodePort: p.NodePort}
		}
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		out.Status.LoadBalancer.Ingress = append(out.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ing.IP})
	}
	return out, nil
}

// SlimEndpointSlice returns what the proxier reads of an EndpointSlice: its
// identity, the label naming its Service, the annotation with the time of
// the change that triggered it (for the programming-latency metric), its
// address type and ports, and of each endpoint its addresses, conditions,
// node and zone hints. Other objects pass unchanged.
func SlimEndpointSlice(obj any) (any, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	out := &discoveryv1.EndpointSlice{ObjectMeta: slimMeta(&sl.ObjectMeta), AddressType: sl.AddressType}
	if name, ok := sl.Labels[discoveryv1.LabelServiceName]; ok {
		out.Labels = map[string]string{discoveryv1.LabelServiceName: name}
	}
	if t, ok := sl.Annotations[corev1.EndpointsLastChangeTriggerTime]; ok {
		out.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: t}
	}
	if len(sl.Ports) > 0 {
		out.Ports = make([]discoveryv1.EndpointPort, len(sl.Ports))
		for i, p := range sl.Ports {
			out.Ports[i] = discoveryv1.EndpointPort{Name: p.Name, Protocol: p.Protocol, Port: p.Port}
		}
	}
	if len(sl.Endpoints) > 0 {
		out.Endpoints = make([]discoveryv1.Endpoint, len(sl.Endpoints))
		for i, e := range sl.Endpoints {
			out.Endpoints[i] = discoveryv1.Endpoint{Addresses: e.Addresses, Conditions: e.Conditions, NodeName: e.NodeName}
			if e.Hints != nil && len(e.Hints.ForZones) > 0 {
				out.Endpoints[i].Hints = &discoveryv1.EndpointHints{ForZones: e.Hints.ForZones}
			}
		}
	}
	return out, nil
}

// slimMeta keeps an object's identity: namespace, name, UID,
// resourceVersion and creation time.
func slimMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: m.Namespace, Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion,
		CreationTimestamp: m.CreationTimestamp}
}
