package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/flatnet-io/flatnet/internal/lab"
)

const benchNS = "bench"

// backends deploys two netexec pods on node-2 and returns them: every
// benchmark Service points at them, so every Service really works.
func backends(ctx context.Context, c kubernetes.Interface) ([]corev1.Pod, error) {
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNS}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	for range 120 {
		if _, err = c.CoreV1().ServiceAccounts(benchNS).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	return pinnedPods(ctx, c, "backend", "node-2", 2)
}

// pinnedPods deploys n netexec pods on node and waits for them to be Ready.
func pinnedPods(ctx context.Context, c kubernetes.Interface, name, node string, n int32) ([]corev1.Pod, error) {
	d := lab.NetexecDeployment(name, n)
	d.Spec.Template.Spec.TopologySpreadConstraints = nil
	d.Spec.Template.Spec.NodeSelector = map[string]string{corev1.LabelHostname: node}
	if _, err := c.AppsV1().Deployments(benchNS).Create(ctx, d, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		pods, err := c.CoreV1().Pods(benchNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return nil, err
		}
		var ready []corev1.Pod
		for _, p := range pods.Items {
			for _, cond := range p.Status.Conditions {
				if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue && p.DeletionTimestamp == nil {
					ready = append(ready, p)
				}
			}
		}
		if len(ready) == int(n) {
			return ready, nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return nil, fmt.Errorf("%s pods on %s not ready", name, node)
}

// createService makes a selector-less Service and its EndpointSlice on the
// backends (slice first: the Service appears with its endpoints).
func createService(ctx context.Context, c kubernetes.Interface, name string, ips []string) (*corev1.Service, error) {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "flatnet-bench"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, NodeName: ptr.To("node-2"),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	if _, err := c.DiscoveryV1().EndpointSlices(benchNS).Create(ctx, s, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
	created, err := c.CoreV1().Services(benchNS).Create(ctx, svc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return c.CoreV1().Services(benchNS).Get(ctx, name, metav1.GetOptions{})
	}
	return created, err
}

// ensureServices creates bench Services svc-0 .. svc-(n-1) that are missing,
// with parallel workers, and reports how long it took.
func ensureServices(ctx context.Context, c kubernetes.Interface, n int, ips []string) (time.Duration, error) {
	start := time.Now()
	existing, err := c.CoreV1().Services(benchNS).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return 0, err
	}
	have := map[string]bool{}
	for _, s := range existing.Items {
		have[s.Name] = true
	}
	next := make(chan int)
	var failed atomic.Value
	var wg sync.WaitGroup
	for range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if _, err := createService(ctx, c, fmt.Sprintf("svc-%d", i), ips); err != nil {
					failed.Store(err)
				}
			}
		}()
	}
	for i := range n {
		if !have[fmt.Sprintf("svc-%d", i)] {
			next <- i
		}
	}
	close(next)
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		return 0, err
	}
	return time.Since(start), nil
}
