// Package kubelet is the lab kubelet: it registers its Node, keeps the node
// lease and status fresh, and turns the Pods bound to its node into network
// namespaces with processes in them, wired through the node's CNI conflist
// with libcni exactly as containerd would (ADD when a pod starts, DEL when it
// is gone). A "container" is a process in the pod's network namespace; see
// package workload for how images map to programs.
//
// Design notes (state it leaves on the node):
//
//   - Per pod a network namespace <prefix><pod UID> (none for hostNetwork
//     pods, whose processes run in the node's namespace), the attachment the
//     CNI plugin makes in it, processes started through package nsexec, and
//     <state>/pods/<uid>/<container>.log.
//   - On start it deletes the sandboxes of pods that no longer exist (CNI DEL,
//     then the namespace) and asks the plugins to GC everything but the live
//     attachments, so a kubelet that crashed leaks nothing for long.
//   - A pod being deleted keeps running for its grace period (SIGTERM, then
//     SIGKILL), so terminating endpoints exist as in a real cluster; then the
//     kubelet runs CNI DEL, removes the namespace and deletes the Pod object.
package kubelet

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// Config is what one lab kubelet needs.
type Config struct {
	NodeName    string
	NodeIPs     []string // InternalIPs, one per family; the first is the primary
	Kubeconfig  string
	StateDir    string
	CNIConfDir  string
	CNIBinDir   string
	NetnsPrefix string // pod namespaces are <prefix><pod UID>; no other node's start with it
	MaxPods     int
	Self        string // the flatnet binary: built-in workloads and nsexec
}

// Kubelet runs the pods of one node.
type Kubelet struct {
	cfg    Config
	client kubernetes.Interface
	log    *slog.Logger
	net    *network

	mu      sync.Mutex
	workers map[types.UID]*podWorker
	lister  func(uid types.UID) (*corev1.Pod, bool)
}

// New connects to the API server.
func New(cfg Config, log *slog.Logger) (*Kubelet, error) {
	if err := validNodeIPs(cfg.NodeIPs); err != nil {
		return nil, err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst = 50, 100
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	if cfg.Self == "" {
		if cfg.Self, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	return &Kubelet{cfg: cfg, client: client, log: log, workers: map[types.UID]*podWorker{},
		net: &network{confDir: cfg.CNIConfDir, binDir: cfg.CNIBinDir, cacheDir: filepath.Join(cfg.StateDir, "cni-cache")}}, nil
}

// Run works until ctx ends.
func (k *Kubelet) Run(ctx context.Context) error {
	if err := k.registerNode(ctx); err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	go k.heartbeat(ctx)

	factory := informers.NewSharedInformerFactoryWithOptions(k.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.cfg.NodeName).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	_ = inf.SetTransform(stripManagedFields)
	k.lister = func(uid types.UID) (*corev1.Pod, bool) {
		for _, obj := range inf.GetStore().List() {
			if p := obj.(*corev1.Pod); p.UID == uid {
				return p, true
			}
		}
		return nil, false
	}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { k.poke(ctx, obj) },
		UpdateFunc: func(_, obj any) { k.poke(ctx, obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			k.poke(ctx, obj)
		},
	})
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return ctx.Err()
	}
	k.cleanupOrphans(ctx, inf.GetStore().List())
	<-ctx.Done()
	k.log.Info("kubelet stopping; pods keep running until the lab goes down")
	return nil
}

// poke hands a pod event to the pod's worker, starting one when needed.
func (k *Kubelet) poke(ctx context.Context, obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	k.mu.Lock()
	w, exists := k.workers[pod.UID]
	if !exists {
		w = newPodWorker(k, pod)
		k.workers[pod.UID] = w
		go func() {
			w.run(ctx)
			k.mu.Lock()
			delete(k.workers, pod.UID)
			k.mu.Unlock()
		}()
	}
	k.mu.Unlock()
	w.notify()
}

func stripManagedFields(obj any) (any, error) {
	if p, ok := obj.(*corev1.Pod); ok {
		p.ManagedFields = nil
	}
	return obj, nil
}

func (k *Kubelet) podDir(uid types.UID) string {
	return filepath.Join(k.cfg.StateDir, "pods", string(uid))
}

const syncPeriod = time.Second

// validNodeIPs accepts one address, or two of different families.
func validNodeIPs(ips []string) error {
	if len(ips) == 0 || len(ips) > 2 {
		return fmt.Errorf("node IPs %q: want one, or one per IP family", ips)
	}
	var fams []bool
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("node IP: %w", err)
		}
		fams = append(fams, a.Is4())
	}
	if len(fams) == 2 && fams[0] == fams[1] {
		return fmt.Errorf("node IPs %q: two of the same family", ips)
	}
	return nil
}
