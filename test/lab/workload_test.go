package lab_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/flatnet-io/flatnet/internal/ipam"
	"github.com/flatnet-io/flatnet/internal/lab"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/podnet"
)

const agnhost = lab.Agnhost

func netexecDeployment(name string, replicas int32) *appsv1.Deployment {
	return lab.NetexecDeployment(name, replicas)
}

// deploy creates a Deployment and waits for want Ready pods; it returns them.
func deploy(t *testing.T, ns string, d *appsv1.Deployment) []corev1.Pod {
	t.Helper()
	if _, err := client.AppsV1().Deployments(ns).Create(context.Background(), d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return waitReady(t, ns, d.Name, int(*d.Spec.Replicas))
}

// scale sets a Deployment's replicas and waits for exactly that many Ready pods.
func scale(t *testing.T, ns, name string, replicas int32) []corev1.Pod {
	t.Helper()
	ctx := context.Background()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error { // the controller updates it too
		s, err := client.AppsV1().Deployments(ns).GetScale(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.Spec.Replicas = replicas
		_, err = client.AppsV1().Deployments(ns).UpdateScale(ctx, name, s, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return waitReady(t, ns, name, int(replicas))
}

func waitReady(t *testing.T, ns, app string, want int) []corev1.Pod {
	t.Helper()
	var ready []corev1.Pod
	eventually(t, 3*time.Minute, fmt.Sprintf("%d ready pods of %s", want, app), func() error {
		list, err := client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return err
		}
		ready = ready[:0]
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil && isReady(&p) {
				ready = append(ready, p)
			}
		}
		if len(ready) != want || len(list.Items) != want {
			return fmt.Errorf("%d ready of %d pods", len(ready), len(list.Items))
		}
		return nil
	})
	return ready
}

func isReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// ipamClaims counts the IPAM claims on node i and returns their addresses.
func ipamClaims(t *testing.T, i int) []string {
	t.Helper()
	a, err := ipam.New(ipam.Config{Network: "flatnet", DataDir: filepath.Join(layout.NodeDir(i), "ipam")})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	st, err := a.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for addr := range st.Claims {
		out = append(out, addr.String())
	}
	return out
}

// podVeths counts the flatnet-cni host veths on node i.
func podVeths(t *testing.T, i int) int {
	t.Helper()
	h, err := netns.Handle(netns.Path(layout.NS(layout.NodeName(i))))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range links {
		if _, _, _, ok := podnet.ParseAlias(l.Attrs().Alias); ok {
			n++
		}
	}
	return n
}
