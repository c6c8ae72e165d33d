// Package lab is `flatnet lab`: a whole Kubernetes cluster network on one
// machine. It runs the real upstream control plane (flatnet-controlplane,
// built from Kubernetes v1.37.2), makes each node a network namespace on a
// lab underlay, and runs a lab kubelet and flatnetd per node.
//
// Design notes (the state a lab leaves on the machine while it is up):
//
//   - Network namespaces, all named fn-<lab>-*: "switch" holds the underlay
//     bridge br0 and is also the "outside" host (172.30.0.1, fd00:30::1);
//     "cp" holds etcd, kube-apiserver, kube-controller-manager and
//     kube-scheduler (172.30.0.2, fd00:30::2); "node-N" is node N
//     (172.30.0.(10+N), fd00:30::(10+N)) with its flatnetd, its lab kubelet
//     and, inside, the node bridge made by flatnet-cni; pod namespaces are
//     fn-<lab>-node-N-p-<pod UID>. Each host has a veth to br0, an address of each
//     family (IPv6 ones without DAD: nothing else can hold them) and a
//     default route of each family via the outside host. Nothing is added to
//     the machine's own namespace but one loopback listener, the API
//     forwarder for kubectl.
//   - Processes, started detached (own session), their logs in
//     <state>/logs/<component>.log and pids in <state>/pids/. Every one of
//     them carries FLATNET_LAB_PROCESS=<its pid file> in its environment,
//     and either runs in a lab namespace or names the state directory on its
//     command line, which is how `lab down` finds them all, even orphans,
//     and how `lab up` finds one whose pid file it never wrote.
//   - `lab up` and `lab down` hold a lock (flock on <state>/lock); every
//     step of `lab up` checks the whole desired state of what it makes and
//     completes it, and files are replaced atomically, so an up killed at
//     any point is finished by the next.
//   - Files under <state> (default /var/lib/flatnet/labs/<lab>): PKI,
//     kubeconfigs, etcd data, per-node CNI config, IPAM store and result cache.
//
// `lab down` kills the processes, deletes the namespaces (which removes every
// veth and bridge in them) and the state directory; it is safe to run twice.
// Since it runs as root and removes by name, a lab name is a DNS label of at
// most MaxNameLen characters, checked before any command does anything; the
// state root must be absolute, every path made from a name is verified to
// stay below it, and a directory without lab.json is never removed.
package lab

import (
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// DefaultStateRoot is where labs keep their files.
const DefaultStateRoot = "/var/lib/flatnet/labs"

// Layout names everything of one lab.
type Layout struct {
	Name  string
	Nodes int
	Dir   string // state directory
}

// NewLayout returns the layout of lab name under root, or why name or root
// cannot hold a lab (see ValidateName).
func NewLayout(root, name string, nodes int) (Layout, error) {
	if err := ValidateName(name); err != nil {
		return Layout{}, err
	}
	if err := validateStateRoot(root); err != nil {
		return Layout{}, err
	}
	dir, err := under(filepath.Clean(root), name)
	if err != nil {
		return Layout{}, err
	}
	return Layout{Name: name, Nodes: nodes, Dir: dir}, nil
}

// Prefix starts the name of every namespace of this lab.
func (l Layout) Prefix() string { return "fn-" + l.Name + "-" }

// NS is the name of the namespace of a role: "switch", "cp", "node-1", ...
func (l Layout) NS(role string) string { return l.Prefix() + role }

// NodeName is the Kubernetes name of node i (1-based).
func (l Layout) NodeName(i int) string { return "node-" + strconv.Itoa(i) }

// NodeIndex is the number of the node called name, if the lab has it.
func (l Layout) NodeIndex(name string) (int, bool) {
	for i := 1; i <= l.Nodes; i++ {
		if l.NodeName(i) == name {
			return i, true
		}
	}
	return 0, false
}

// PodNSPrefix starts the namespace name of every pod on node: its kubelet
// removes the namespaces with this prefix whose pod it does not run, so it
// must name the node ("-p-" keeps node-1's apart from node-10's).
func (l Layout) PodNSPrefix(node string) string { return l.NS(node) + "-p-" }

// PodNS is the namespace name of the pod uid on node.
func (l Layout) PodNS(node, uid string) string { return l.PodNSPrefix(node) + uid }

// roleRE matches what follows the prefix in the name of a lab's namespace.
// It is matched whole because prefixes nest: lab "a-b"'s namespaces start
// with lab "a"'s prefix "fn-a-", but "b-switch" is no role.
var roleRE = regexp.MustCompile(`^(switch|cp|node-[1-9][0-9]*(-p-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?)$`)

// OwnsNS reports whether the namespace called name is this lab's.
func (l Layout) OwnsNS(name string) bool {
	role, ok := strings.CutPrefix(name, l.Prefix())
	return ok && roleRE.MatchString(role)
}

// Namespaces lists the lab's namespaces on the machine.
func (l Layout) Namespaces() ([]string, error) {
	names, err := netns.List(l.Prefix())
	return slices.DeleteFunc(names, func(n string) bool { return !l.OwnsNS(n) }), err
}

// Path joins parts under the state directory. The parts are names this
// package chooses ("pki", "logs", node names); a name that comes from
// elsewhere (a process name) goes through under instead.
func (l Layout) Path(parts ...string) string {
	return filepath.Join(append([]string{l.Dir}, parts...)...)
}

// NodeDir is node i's own directory (CNI config, IPAM, cache, pod state).
func (l Layout) NodeDir(i int) string { return l.Path("nodes", l.NodeName(i)) }

// Kubeconfig is the path of a kubeconfig by owner ("admin", "node-1", ...).
func (l Layout) Kubeconfig(owner string) string { return l.Path("kubeconfig", owner+".kubeconfig") }
