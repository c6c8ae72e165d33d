package kubelet

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

const (
	leaseDuration  = 40 * time.Second
	heartbeatEvery = 10 * time.Second
	kubeletVersion = "v1.37.2"
)

// registerNode creates the Node object (or keeps the existing one) and
// posts a first status.
func (k *Kubelet) registerNode(ctx context.Context) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: k.cfg.NodeName,
		Labels: map[string]string{
			corev1.LabelHostname:   k.cfg.NodeName,
			corev1.LabelOSStable:   runtime.GOOS,
			corev1.LabelArchStable: runtime.GOARCH,
		},
	}}
	_, err := k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return k.updateNodeStatus(ctx)
}

// heartbeat renews the node lease and refreshes the node status.
func (k *Kubelet) heartbeat(ctx context.Context) {
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		if err := k.renewLease(ctx); err != nil && ctx.Err() == nil {
			k.log.Warn("renew node lease", "err", err)
		}
		if err := k.updateNodeStatus(ctx); err != nil && ctx.Err() == nil {
			k.log.Warn("update node status", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (k *Kubelet) renewLease(ctx context.Context) error {
	leases := k.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		node, err := k.client.CoreV1().Nodes().Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: k.cfg.NodeName, Namespace: corev1.NamespaceNodeLease,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: corev1.SchemeGroupVersion.String(), Kind: "Node", Name: node.Name, UID: node.UID}}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(k.cfg.NodeName),
				LeaseDurationSeconds: ptr.To(int32(leaseDuration / time.Second)), RenewTime: &now},
		}
		_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.Spec.RenewTime = &now
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

// updateNodeStatus posts addresses, capacity and conditions. The node is
// Ready only when the network is: a CNI conflist exists and its plugins
// answer STATUS, as a real kubelet reports NetworkReady.
func (k *Kubelet) updateNodeStatus(ctx context.Context) error {
	node, err := k.client.CoreV1().Nodes().Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	netErr := k.net.ready(ctx)
	now := metav1.Now()
	ready := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "lab kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now}
	if netErr != nil {
		ready.Status, ready.Reason = corev1.ConditionFalse, "NetworkPluginNotReady"
		ready.Message = "network plugin not ready: " + netErr.Error()
	}
	conds := []corev1.NodeCondition{ready}
	for _, t := range []corev1.NodeConditionType{corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure} {
		conds = append(conds, corev1.NodeCondition{Type: t, Status: corev1.ConditionFalse, Reason: "KubeletHas" + "No" + string(t),
			LastHeartbeatTime: now, LastTransitionTime: now})
	}
	for i, c := range conds { // keep transition times of unchanged conditions
		for _, old := range node.Status.Conditions {
			if old.Type == c.Type && old.Status == c.Status {
				conds[i].LastTransitionTime = old.LastTransitionTime
			}
		}
	}
	hostname, _ := os.Hostname()
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(strconv.Itoa(runtime.NumCPU())),
		corev1.ResourceMemory: resource.MustParse("8Gi"),
		corev1.ResourcePods:   resource.MustParse(strconv.Itoa(k.cfg.MaxPods)),
	}
	node.Status.Capacity, node.Status.Allocatable = capacity, capacity
	node.Status.Conditions = conds
	node.Status.Addresses = nil
	for _, ip := range k.cfg.NodeIPs {
		node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: k.cfg.NodeName})
	node.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: kubeletVersion, ContainerRuntimeVersion: "flatnet-lab://processes",
		OperatingSystem: runtime.GOOS, Architecture: runtime.GOARCH, OSImage: "flatnet lab on " + hostname,
		KernelVersion: unix.ByteSliceToString(uts.Release[:])}
	_, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

// hostIPs are the node's InternalIPs as a pod's status.hostIPs.
func (k *Kubelet) hostIPs() []corev1.HostIP {
	out := make([]corev1.HostIP, 0, len(k.cfg.NodeIPs))
	for _, ip := range k.cfg.NodeIPs {
		out = append(out, corev1.HostIP{IP: ip})
	}
	return out
}
