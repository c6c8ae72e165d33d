package kubelet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"syscall"

	cnitypes "github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"

	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/netns"
)

// sandbox is a pod's network: its namespace (empty for hostNetwork) and the
// addresses CNI gave it.
type sandbox struct {
	nsPath string
	ips    []string
}

func (w *podWorker) nsName() string { return w.k.cfg.NetnsPrefix + string(w.uid) }

func (w *podWorker) cniPod() cniruntime.Pod {
	return cniruntime.Pod{ID: string(w.uid), NetNS: netns.Path(w.nsName()), IfName: "eth0",
		Namespace: w.ns, Name: w.name, UID: string(w.uid)}
}

func (w *podWorker) sandboxExists() bool {
	_, err := os.Stat(netns.Path(w.nsName()))
	return err == nil
}

// ensureSandbox makes the pod's namespace and attaches it through CNI. A
// namespace left by an earlier kubelet is adopted with its cached result,
// so the pod keeps its address.
func (w *podWorker) ensureSandbox(ctx context.Context) error {
	if w.sandbox != nil {
		return nil
	}
	if w.pod.Spec.HostNetwork {
		w.sandbox = &sandbox{ips: w.k.cfg.NodeIPs}
		return nil
	}
	rt, err := w.k.net.runtime()
	if err != nil {
		return err
	}
	pod := w.cniPod()
	if w.sandboxExists() {
		if res, err := rt.CachedResult(pod); err == nil && res != nil {
			if ips := resultIPs(res); len(ips) > 0 {
				killNamespaceProcesses(pod.NetNS)
				w.sandbox = &sandbox{nsPath: pod.NetNS, ips: ips}
				return nil
			}
		}
		// Unknown state: start over.
		if err := w.deleteSandbox(ctx); err != nil {
			return err
		}
	}
	if _, err := netns.Create(w.nsName()); err != nil {
		return fmt.Errorf("create pod network namespace: %w", err)
	}
	res, err := rt.Add(ctx, pod)
	if err != nil {
		_ = rt.Del(context.WithoutCancel(ctx), pod)
		_ = netns.Delete(w.nsName())
		return fmt.Errorf("CNI ADD: %w", err)
	}
	ips := resultIPs(res)
	if len(ips) == 0 {
		return errors.New("CNI ADD returned no address")
	}
	w.sandbox = &sandbox{nsPath: pod.NetNS, ips: ips}
	w.k.log.Info("pod network ready", "pod", w.ns+"/"+w.name, "ips", strings.Join(ips, ","))
	return nil
}

// deleteSandbox runs CNI DEL and removes the namespace.
func (w *podWorker) deleteSandbox(ctx context.Context) error {
	if w.pod != nil && w.pod.Spec.HostNetwork {
		return nil
	}
	if rt, err := w.k.net.runtime(); err == nil {
		if err := rt.Del(context.WithoutCancel(ctx), w.cniPod()); err != nil {
			return fmt.Errorf("CNI DEL: %w", err)
		}
	}
	killNamespaceProcesses(netns.Path(w.nsName()))
	return netns.Delete(w.nsName())
}

func resultIPs(res cnitypes.Result) []string {
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return nil
	}
	var out []string
	for _, ip := range r.IPs {
		out = append(out, ip.Address.IP.String())
	}
	return out
}

// killNamespaceProcesses SIGKILLs every process whose network namespace is
// the one at nsPath (containers of an earlier kubelet).
func killNamespaceProcesses(nsPath string) {
	for _, pid := range netns.Processes(nsPath) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// podUIDRE is the form of the UIDs the API server gives pods.
var podUIDRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// cleanupOrphans removes sandboxes of pods that no longer exist on this node
// and lets the CNI plugins GC everything but the live attachments. A
// sandbox is a namespace named <prefix><pod UID>; other names that start
// with the prefix are not this kubelet's.
func (k *Kubelet) cleanupOrphans(ctx context.Context, objs []any) {
	live := map[string]bool{}
	for _, o := range objs {
		live[string(o.(*corev1.Pod).UID)] = true
	}
	names, _ := netns.List(k.cfg.NetnsPrefix)
	rt, err := k.net.runtime()
	for _, n := range names {
		uid := strings.TrimPrefix(n, k.cfg.NetnsPrefix)
		if live[uid] || !podUIDRE.MatchString(uid) {
			continue
		}
		if err == nil {
			_ = rt.Del(ctx, cniruntime.Pod{ID: uid, NetNS: netns.Path(n), IfName: "eth0"})
		}
		killNamespaceProcesses(netns.Path(n))
		_ = netns.Delete(n)
		k.log.Info("removed orphaned pod sandbox", "netns", n)
	}
	if err != nil {
		return
	}
	var valid []cnitypes.GCAttachment
	for uid := range live {
		valid = append(valid, cnitypes.GCAttachment{ContainerID: uid, IfName: "eth0"})
	}
	if err := rt.GC(ctx, valid); err != nil {
		k.log.Warn("CNI GC", "err", err)
	}
}

// podIPs turns the sandbox addresses into the status fields.
func (s *sandbox) podIPs() []corev1.PodIP {
	var out []corev1.PodIP
	for _, ip := range s.ips {
		if net.ParseIP(ip) != nil {
			out = append(out, corev1.PodIP{IP: ip})
		}
	}
	return out
}
