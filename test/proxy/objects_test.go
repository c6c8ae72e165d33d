package proxy_test

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// svc is a Service of namespace "ns" with TCP 80 -> 8080 and UDP 81 -> 8081.
func svc(name, clusterIP string, mods ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: clusterIP, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP},
			{Name: "udp", Port: 81, Protocol: corev1.ProtocolUDP},
		}},
	}
	for _, m := range mods {
		m(s)
	}
	return s
}

func nodePort(tcp, udp int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort, s.Spec.Ports[1].NodePort = tcp, udp
	}
}

func externalLocal(healthPort int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = healthPort
	}
}

func internalLocal(s *corev1.Service) {
	s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
}

func affinity(seconds int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To(seconds)}}
	}
}

// ep is an endpoint of a pod; node-1 is the proxier's own node.
type ep struct {
	p           *pod
	node        string
	ready       bool
	serving     bool
	terminating bool
	zone        string
}

func readyOn(p *pod, node string) ep { return ep{p: p, node: node, ready: true, serving: true} }

// slice is the EndpointSlice of a Service made by svc().
func slice(service string, eps ...ep) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: service + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("http"), Port: ptr.To(int32(8080)), Protocol: ptr.To(corev1.ProtocolTCP)},
			{Name: ptr.To("udp"), Port: ptr.To(int32(8081)), Protocol: ptr.To(corev1.ProtocolUDP)},
		},
	}
	for _, e := range eps {
		d := discoveryv1.Endpoint{Addresses: []string{e.p.ip}, NodeName: ptr.To(e.node),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(e.ready), Serving: ptr.To(e.serving), Terminating: ptr.To(e.terminating)}}
		if e.zone != "" {
			d.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: e.zone}}}
		}
		s.Endpoints = append(s.Endpoints, d)
	}
	return s
}

func hostPort(ip string, port int) string { return fmt.Sprintf("%s:%d", ip, port) }

// linesPort is the EndpointSlice port of the line server on 8082.
func linesPort() discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To("lines"), Port: ptr.To(int32(8082)), Protocol: ptr.To(corev1.ProtocolTCP)}
}
