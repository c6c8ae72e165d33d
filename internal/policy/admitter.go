package policy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flatnet-io/flatnet/internal/admit"
)

// Admitter answers the CNI plugin (package admit): a pod's addresses are
// in every engine's table, isolated and granted as its policies say,
// before its interface exists. Why the pod is isolated from its first
// packet:
//
//   - the plugin asks after allocating the addresses and before making
//     the veth, and fails the ADD (fail closed, unless its configuration
//     says failOpen) when the agent refuses or does not answer in time;
//     the runtime then retries, and no container of the pod has started;
//   - the agent answers only once each engine has committed a sync that
//     began after the attachment was recorded (Engine.Commit): the pod is
//     then a member of every set it belongs in, though its status (and
//     so its addresses) reaches the API server only after it has started;
//   - the pod itself is read from the informer's cache, or from the API
//     server when the cache does not hold it yet: its labels decide its
//     policies, and it must be scheduled to this node;
//   - the attachments are kept in the tables (Attachments), so a
//     restarted agent reads them back before its first commit, which
//     replaces the table in one transaction (flushed and refilled sets
//     in the same batch): the pods stay isolated throughout.
//
// Peers on other nodes learn the pod's addresses from its status, as
// before: until then their policies do not count it as a peer, which
// denies what they would allow, never the reverse.
type Admitter struct {
	Node        string
	CIDRs       []netip.Prefix // the addresses it may admit: the cluster's pod CIDRs
	Attachments *Attachments
	// Engines are what must hold the pod before the plugin is answered:
	// each family's Engine, and the Guard.
	Engines []Committer
	// Pod looks a pod up: the cache when it holds the pod of that UID (or
	// uid is empty), the API server otherwise.
	Pod func(ctx context.Context, namespace, name string, uid types.UID) (*corev1.Pod, error)
}

// Committer is an engine an admission waits for.
type Committer interface {
	Commit(ctx context.Context) error
	Poke()
}

var _, _ Committer = &Engine{}, &Guard{}

// Handle implements admit.Handler.
func (a *Admitter) Handle(ctx context.Context, req admit.Request) error {
	switch req.Op {
	case admit.Add:
		return a.admit(ctx, req)
	case admit.Del:
		if a.Attachments.Release(req.HostVeth) {
			for _, e := range a.Engines {
				e.Poke()
			}
		}
		return nil
	}
	return fmt.Errorf("unknown op %q", req.Op)
}

func (a *Admitter) admit(ctx context.Context, req admit.Request) error {
	if req.Namespace == "" || req.Name == "" || req.HostVeth == "" || len(req.IPs) == 0 {
		return errors.New("a pod's namespace, name, host veth and addresses are needed (K8S_POD_NAMESPACE, K8S_POD_NAME in CNI_ARGS)")
	}
	for _, ip := range req.IPs {
		if !slices.ContainsFunc(a.CIDRs, func(p netip.Prefix) bool { return p.Contains(ip) }) {
			return fmt.Errorf("address %s is outside the cluster's pod CIDRs", ip)
		}
	}
	pod, err := a.Pod(ctx, req.Namespace, req.Name, types.UID(req.UID))
	if err != nil {
		return fmt.Errorf("look up pod %s/%s: %w", req.Namespace, req.Name, err)
	}
	switch {
	case req.UID != "" && types.UID(req.UID) != pod.UID:
		return fmt.Errorf("pod %s/%s is %s, not %s (deleted and created again?)", req.Namespace, req.Name, pod.UID, req.UID)
	case pod.Spec.NodeName != a.Node:
		return fmt.Errorf("pod %s/%s is scheduled to %q, not to this node %q", req.Namespace, req.Name, pod.Spec.NodeName, a.Node)
	}
	a.Attachments.Admit(Attachment{HostVeth: req.HostVeth, IPs: req.IPs, UID: pod.UID, Pod: pod})
	for _, e := range a.Engines {
		if err := e.Commit(ctx); err != nil {
			a.Attachments.Release(req.HostVeth) // the ADD fails: no attachment
			for _, e := range a.Engines {
				e.Poke()
			}
			return fmt.Errorf("admit %s/%s: %w", req.Namespace, req.Name, err)
		}
	}
	return nil
}
