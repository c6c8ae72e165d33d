package lab_test

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

func createPod(t *testing.T, ns string, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	p, err := client.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func getPod(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	p, err := client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A container that exits is restarted under restartPolicy Always, and its
// restart count goes up.
func TestKubeletRestartsExitedContainer(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	createPod(t, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "crasher"}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "c", Image: agnhost, Args: []string{"netexec", "--http-port=8080", "--udp-port=-1"}}},
	}})
	var p *corev1.Pod
	eventually(t, time.Minute, "pod running", func() error {
		if p = getPod(t, ns, "crasher"); !isReady(p) {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		return nil
	})
	// Without a readiness probe the pod is Ready once its process runs,
	// maybe before it listens: retry until the request is taken.
	eventually(t, 30*time.Second, "exit request taken", func() error {
		_, err := httpGet(podNS(p), "http://"+net.JoinHostPort(p.Status.PodIP, "8080")+"/exit?code=3")
		if err != nil && strings.Contains(err.Error(), "connection refused") {
			return err
		}
		return nil // answered 204, or the process exited first
	})
	eventually(t, time.Minute, "container restarted", func() error {
		p = getPod(t, ns, "crasher")
		if len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].RestartCount < 1 || !isReady(p) {
			return fmt.Errorf("statuses %+v", p.Status.ContainerStatuses)
		}
		return nil
	})
}

// A pod whose image has no built-in program and names no command on the
// machine fails with a reason.
func TestUnknownImageFailsWithReason(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	createPod(t, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "unknown"}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "c", Image: "example.com/nothing:1", Command: []string{"/no/such/program"}}},
	}})
	eventually(t, time.Minute, "pod failed", func() error {
		p := getPod(t, ns, "unknown")
		if p.Status.Phase != corev1.PodFailed || !strings.Contains(p.Status.Message, "does not exist on this machine") {
			return fmt.Errorf("phase %s reason %q message %q", p.Status.Phase, p.Status.Reason, p.Status.Message)
		}
		return nil
	})
}

// A hostNetwork pod runs in its node's namespace and reports the node's IP.
func TestHostNetworkPod(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	createPod(t, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "hostnet"}, Spec: corev1.PodSpec{
		HostNetwork: true,
		Containers:  []corev1.Container{{Name: "c", Image: agnhost, Args: []string{"netexec", "--http-port=18080", "--udp-port=-1"}}},
	}})
	var p *corev1.Pod
	eventually(t, time.Minute, "pod ready", func() error {
		if p = getPod(t, ns, "hostnet"); !isReady(p) {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		return nil
	})
	if p.Status.PodIP != p.Status.HostIP {
		t.Fatalf("hostNetwork pod IP %s, node IP %s", p.Status.PodIP, p.Status.HostIP)
	}
	if got := hostname(t, podNS(p), net.JoinHostPort(p.Status.HostIP, "18080")); got != "hostnet" {
		t.Fatalf("GET on the node's address: %q", got)
	}
}

// A deleted pod keeps serving for its grace period, and meanwhile the
// EndpointSlice controller lists it as terminating.
func TestGracefulTerminationShowsTerminatingEndpoint(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	labels := map[string]string{"app": "graceful"}
	createPod(t, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "graceful", Labels: labels}, Spec: corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr.To(int64(20)),
		Containers: []corev1.Container{{Name: "c", Image: agnhost,
			Args:  []string{"netexec", "--http-port=8080", "--udp-port=-1", "--delay-shutdown=6"},
			Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
			// Ready only once it serves (and so has its SIGTERM handler):
			// a SIGTERM before that would end it at once, as in any container.
			ReadinessProbe: &corev1.Probe{PeriodSeconds: 1,
				ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}}}}},
	}})
	_, err := client.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "graceful"},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var p *corev1.Pod
	eventually(t, time.Minute, "pod ready", func() error {
		if p = getPod(t, ns, "graceful"); !isReady(p) {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		return nil
	})
	start := time.Now()
	if err := client.CoreV1().Pods(ns).Delete(context.Background(), "graceful", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "terminating endpoint", func() error {
		slices, err := client.DiscoveryV1().EndpointSlices(ns).List(context.Background(), metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=graceful"})
		if err != nil {
			return err
		}
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				if ptr.Deref(e.Conditions.Terminating, false) && ptr.Deref(e.Conditions.Serving, false) {
					return nil
				}
			}
		}
		return fmt.Errorf("no serving+terminating endpoint in %d slices", len(slices.Items))
	})
	if got, err := httpGet(podNS(p), "http://"+net.JoinHostPort(p.Status.PodIP, "8080")+"/hostname"); err != nil || got != "graceful" {
		t.Fatalf("terminating pod does not serve: %q, %v", got, err)
	}
	eventually(t, 30*time.Second, "pod gone", func() error {
		if _, err := client.CoreV1().Pods(ns).Get(context.Background(), "graceful", metav1.GetOptions{}); err == nil {
			return fmt.Errorf("still there")
		}
		return nil
	})
	if d := time.Since(start); d < 5*time.Second {
		t.Fatalf("pod gone after %s, before its 6 s shutdown delay", d)
	}
}

// The manifests in deploy/ are accepted by a real API server.
func TestDeployManifestsDryRun(t *testing.T) {
	requireLab(t)
	kubectl := filepath.Join(root, "bin", "kubectl")
	cmd := exec.Command(kubectl, "apply", "--dry-run=server", "-f", filepath.Join(root, "deploy", "rbac.yaml"), "-f", filepath.Join(root, "deploy", "daemonset.yaml"))
	cmd.Env = append(cmd.Environ(), "KUBECONFIG="+layout.Kubeconfig("admin"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, out)
	}
	for _, want := range []string{"serviceaccount/flatnet", "clusterrole.rbac.authorization.k8s.io/flatnet", "daemonset.apps/flatnet"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}
}
