package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/flatnet-io/flatnet/internal/probe"
)

// Agnhost is the upstream e2e test image the lab serves with built-ins.
const Agnhost = "registry.k8s.io/e2e-test-images/agnhost:2.53"

// NetexecDeployment is agnhost netexec (HTTP 8080, UDP 8081, readiness on
// /healthz) spread evenly over the nodes.
func NetexecDeployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To(int64(5)),
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
					Containers: []corev1.Container{{
						Name: "netexec", Image: Agnhost,
						Args:  []string{"netexec", "--http-port=8080", "--udp-port=8081"},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "udp", ContainerPort: 8081, Protocol: corev1.ProtocolUDP}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
							PeriodSeconds: 1,
						},
					}},
				},
			},
		},
	}
}

// Traffic deploys six netexec pods (namespace flatnet-demo) and shows
// traffic between them: each pod asks a pod on another node, over HTTP and
// UDP, which address it came from; the answer is the asking pod's own.
func Traffic(ctx context.Context, stateRoot, name string, out io.Writer) error {
	l, err := Open(stateRoot, name)
	if err != nil {
		return err
	}
	c, err := Client(l)
	if err != nil {
		return err
	}
	const ns = "flatnet-demo"
	pods, err := deployNetexec(ctx, c, ns, out)
	if err != nil {
		return err
	}
	step(out, "each pod asks a pod on the next node which address it came from (netexec /clientip, UDP clientip), over each IP family")
	failed, asked := 0, 0
	for i, from := range pods {
		to := pods[(i+2)%len(pods)] // two per node, sorted by node: +2 is the next node
		for _, pair := range sameFamilyIPs(from.Status.PodIPs, to.Status.PodIPs) {
			src, dst := pair[0], pair[1]
			seen, err := probe.HTTPGet(l.PodNetNS(&from), net.JoinHostPort(dst, "8080"), "/clientip")
			seenUDP, errUDP := probe.UDPRequest(l.PodNetNS(&from), net.JoinHostPort(dst, "8081"), "clientip")
			verdict := "no NAT"
			if err != nil || errUDP != nil || hostOf(seen) != src || hostOf(seenUDP) != src {
				verdict, failed = fmt.Sprintf("FAILED (%v, %v)", err, errUDP), failed+1
			}
			asked++
			fmt.Fprintf(out, "  %-24s %-7s %-22s -> %-22s %-7s  HTTP saw %-28s UDP saw %-28s %s\n",
				from.Name, from.Spec.NodeName, src, dst, to.Spec.NodeName, seen, seenUDP, verdict)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d cross-node requests failed", failed, asked)
	}
	fmt.Fprintf(out, "\ncross-node pod traffic flows with the client's own pod IP; try:\n  flatnet lab exec %s/%s -- curl -s %s/hostname\n",
		ns, pods[0].Name, net.JoinHostPort(pods[len(pods)-1].Status.PodIP, "8080"))
	return nil
}

// deployNetexec creates namespace ns and the netexec Deployment in it (or
// finds them) and returns its six pods once Ready, sorted by node.
func deployNetexec(ctx context.Context, c kubernetes.Interface, ns string, out io.Writer) ([]corev1.Pod, error) {
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	for range 60 { // pods need the namespace's default ServiceAccount
		if _, err := c.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	_, err = c.AppsV1().Deployments(ns).Create(ctx, NetexecDeployment("netexec", 6), metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	step(out, "deployment %s/netexec: 6 agnhost netexec pods spread over the nodes", ns)
	var pods []corev1.Pod
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		list, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=netexec"})
		if err != nil {
			return nil, err
		}
		pods = pods[:0]
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil && p.Status.PodIP != "" && podReady(&p) {
				pods = append(pods, p)
			}
		}
		if len(pods) == 6 {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("only %d of 6 netexec pods ready after 3 minutes", len(pods))
		}
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Spec.NodeName+pods[i].Name < pods[j].Spec.NodeName+pods[j].Name })
	return pods, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func hostOf(hostport string) string {
	h, _, _ := net.SplitHostPort(hostport)
	return h
}

// sameFamilyIPs pairs each address of a with the address of b of the same
// IP family: one pair on a single-stack cluster, two on a dual-stack one.
func sameFamilyIPs(a, b []corev1.PodIP) [][2]string {
	var out [][2]string
	for _, x := range a {
		xa, err := netip.ParseAddr(x.IP)
		if err != nil {
			continue
		}
		for _, y := range b {
			if ya, err := netip.ParseAddr(y.IP); err == nil && ya.Is4() == xa.Is4() {
				out = append(out, [2]string{x.IP, y.IP})
			}
		}
	}
	return out
}
