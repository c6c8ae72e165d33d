// Package cniruntime calls CNI plugins the way containerd and CRI-O do:
// through libcni, with a conflist, the Kubernetes CNI_ARGS, capability
// arguments and a result cache. The demo, the tests, the benchmark and the
// lab kubelet all use it, so the plugin is always exercised by the same code
// path a real runtime uses.
//
// A plugin works in the network namespace it is started in. When NodeNS is
// set, every call locks its goroutine's thread, switches it into that
// namespace and execs the plugin from there (the child inherits the thread's
// namespace), then switches back.
package cniruntime

import (
	"context"
	"fmt"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// Runtime is one node's view of one CNI network.
type Runtime struct {
	NodeNS string // namespace path the plugins run in; "" = the caller's
	List   *libcni.NetworkConfigList
	cni    *libcni.CNIConfig
}

// New parses conflist and prepares calls to plugins found in pluginDirs,
// caching results under cacheDir (containerd uses /var/lib/cni/results).
func New(nodeNS string, pluginDirs []string, cacheDir string, conflist []byte) (*Runtime, error) {
	list, err := libcni.ConfListFromBytes(conflist)
	if err != nil {
		return nil, fmt.Errorf("parse conflist: %w", err)
	}
	return &Runtime{NodeNS: nodeNS, List: list, cni: libcni.NewCNIConfigWithCacheDir(pluginDirs, cacheDir, nil)}, nil
}

// Pod is the sandbox an attachment is made for.
type Pod struct {
	ID        string // sandbox (container) ID
	NetNS     string // path of the pod's network namespace
	IfName    string // default eth0
	Namespace string
	Name      string
	UID       string
	// Capability arguments, passed only to plugins that declare them.
	PortMappings []PortMapping
	Bandwidth    *Bandwidth
	IPs          []string
	MAC          string
}

// PortMapping is the portMappings capability entry.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// Bandwidth is the bandwidth capability entry (bits per second, bits).
type Bandwidth struct {
	IngressRate  int `json:"ingressRate,omitempty"`
	IngressBurst int `json:"ingressBurst,omitempty"`
	EgressRate   int `json:"egressRate,omitempty"`
	EgressBurst  int `json:"egressBurst,omitempty"`
}

func (p Pod) runtimeConf() *libcni.RuntimeConf {
	ifname := p.IfName
	if ifname == "" {
		ifname = "eth0"
	}
	rc := &libcni.RuntimeConf{
		ContainerID: p.ID,
		NetNS:       p.NetNS,
		IfName:      ifname,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ID},
			{"K8S_POD_UID", p.UID},
		},
		CapabilityArgs: map[string]interface{}{},
	}
	if len(p.PortMappings) > 0 {
		rc.CapabilityArgs["portMappings"] = p.PortMappings
	}
	if p.Bandwidth != nil {
		rc.CapabilityArgs["bandwidth"] = p.Bandwidth
	}
	if len(p.IPs) > 0 {
		rc.CapabilityArgs["ips"] = p.IPs
	}
	if p.MAC != "" {
		rc.CapabilityArgs["mac"] = p.MAC
	}
	return rc
}

func (r *Runtime) inNode(fn func() error) error {
	if r.NodeNS == "" {
		return fn()
	}
	return netns.Do(r.NodeNS, fn)
}

// Add attaches the pod to the network (CNI ADD through every plugin of the list).
func (r *Runtime) Add(ctx context.Context, p Pod) (types.Result, error) {
	var res types.Result
	err := r.inNode(func() (err error) {
		res, err = r.cni.AddNetworkList(ctx, r.List, p.runtimeConf())
		return err
	})
	return res, err
}

// CachedResult is the result of the pod's last ADD as libcni cached it.
func (r *Runtime) CachedResult(p Pod) (types.Result, error) {
	return r.cni.GetNetworkListCachedResult(r.List, p.runtimeConf())
}

// Check verifies the attachment against the cached ADD result.
func (r *Runtime) Check(ctx context.Context, p Pod) error {
	return r.inNode(func() error { return r.cni.CheckNetworkList(ctx, r.List, p.runtimeConf()) })
}

// Del detaches the pod (CNI DEL through the list in reverse).
func (r *Runtime) Del(ctx context.Context, p Pod) error {
	return r.inNode(func() error { return r.cni.DelNetworkList(ctx, r.List, p.runtimeConf()) })
}

// GC deletes cached attachments that are not valid and then asks each plugin
// to release everything else it holds for attachments not in valid.
func (r *Runtime) GC(ctx context.Context, valid []types.GCAttachment) error {
	return r.inNode(func() error {
		return r.cni.GCNetworkList(ctx, r.List, &libcni.GCArgs{ValidAttachments: valid})
	})
}

// Status asks every plugin whether it is ready for ADD.
func (r *Runtime) Status(ctx context.Context) error {
	return r.inNode(func() error { return r.cni.GetStatusNetworkList(ctx, r.List) })
}
