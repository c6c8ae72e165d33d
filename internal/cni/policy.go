package cni

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/flatnet-io/flatnet/internal/admit"
	"github.com/flatnet-io/flatnet/internal/ipam"
	"github.com/flatnet-io/flatnet/internal/podnet"
)

// PolicyConf is the "policy" section: when present, ADD asks flatnetd to
// admit the pod's addresses into its NetworkPolicy tables before it makes
// the pod's interface, and fails when flatnetd refuses or does not answer
// within the timeout, unless failOpen (package admit, and the Admitter of
// package policy, say why).
type PolicyConf struct {
	Socket   string `json:"socket,omitempty"`   // default "@flatnet-policy", an abstract socket of the node's namespace
	Timeout  string `json:"timeout,omitempty"`  // default "10s"
	FailOpen bool   `json:"failOpen,omitempty"` // admit nothing and go on when flatnetd cannot answer (not isolated from the first packet)
}

// Admission is a validated PolicyConf.
type Admission struct {
	Socket   string
	Timeout  time.Duration
	FailOpen bool
}

// DefaultAdmissionTimeout bounds how long ADD waits for flatnetd.
const DefaultAdmissionTimeout = 10 * time.Second

func (c *Config) validatePolicy() error {
	p := c.Conf.Policy
	if p == nil {
		return nil
	}
	a := &Admission{Socket: p.Socket, Timeout: DefaultAdmissionTimeout, FailOpen: p.FailOpen}
	if a.Socket == "" {
		a.Socket = admit.DefaultSocket
	}
	if p.Timeout != "" {
		d, err := time.ParseDuration(p.Timeout)
		if err != nil || d <= 0 {
			return fmt.Errorf("policy.timeout %q is not a positive duration", p.Timeout)
		}
		a.Timeout = d
	}
	c.Admission = a
	return nil
}

// k8sArgs reads the Kubernetes keys of CNI_ARGS ("K=V;K=V").
func k8sArgs(args string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(args, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "K8S_") {
			out[k] = v
		}
	}
	return out
}

// admitPod asks flatnetd to admit the pod's addresses (see PolicyConf).
func (s *session) admitPod(args *skel.CmdArgs, allocs []ipam.Allocation) error {
	a := s.cfg.Admission
	if a == nil {
		return nil
	}
	k := k8sArgs(args.Args)
	req := admit.Request{Op: admit.Add, Namespace: k["K8S_POD_NAMESPACE"], Name: k["K8S_POD_NAME"], UID: k["K8S_POD_UID"],
		ContainerID: args.ContainerID, IfName: args.IfName, HostVeth: podnet.HostVethName(s.cfg.Conf.Name, args.ContainerID, args.IfName)}
	for _, al := range allocs {
		req.IPs = append(req.IPs, al.Addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.Timeout)
	defer cancel()
	err := admit.Ask(ctx, a.Socket, req)
	switch {
	case err == nil:
		return nil
	case a.FailOpen:
		fmt.Fprintf(os.Stderr, "flatnet-cni: pod %s/%s not admitted to NetworkPolicy (policy.failOpen): %v\n", req.Namespace, req.Name, err)
		return nil
	}
	return types.NewError(types.ErrTryAgainLater, "NetworkPolicy admission of the pod failed (policy.failOpen is off)", err.Error())
}

// releasePod tells flatnetd the attachment is gone: best effort (an agent
// that does not hear it prunes the record once the veth is gone).
func (s *session) releasePod(args *skel.CmdArgs) {
	a := s.cfg.Admission
	if a == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(a.Timeout, time.Second))
	defer cancel()
	req := admit.Request{Op: admit.Del, ContainerID: args.ContainerID, IfName: args.IfName,
		HostVeth: podnet.HostVethName(s.cfg.Conf.Name, args.ContainerID, args.IfName)}
	if err := admit.Ask(ctx, a.Socket, req); err != nil {
		fmt.Fprintf(os.Stderr, "flatnet-cni: telling flatnetd of the DEL: %v\n", err)
	}
}
