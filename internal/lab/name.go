package lab

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// DefaultStateRoot is where labs keep their files.
const DefaultStateRoot = "/var/lib/flatnet/labs"

// Layout names everything of one lab: its namespaces, its nodes and the
// paths in its state directory. It is a plain value: it makes nothing, and
// only Namespaces looks at the machine.
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

// PodNetNS is the path of a pod's network namespace in this lab.
func (l Layout) PodNetNS(p *corev1.Pod) string {
	if p.Spec.HostNetwork {
		return netns.Path(l.NS(p.Spec.NodeName))
	}
	return netns.Path(l.PodNS(p.Spec.NodeName, string(p.UID)))
}

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

// MaxNameLen bounds a lab's name. No interface name is made from it (the
// switch ports are named after their host, "cp" and "node-N", links inside
// a namespace have fixed names, and pod veths are hashes), so IFNAMSIZ does
// not bind it. Namespace names do: the longest, fn-<lab>-node-244-p-<36-
// character pod UID>, is a file name in /run/netns (NAME_MAX 255, so at
// most 204).
// So would a Unix socket under <default state root>/<lab>/nodes/node-N/
// (sun_path is 108 bytes: about 56 for a short socket name). 32 fits both
// with room, and is a valid DNS label, so the name may also appear in
// Kubernetes objects.
const MaxNameLen = 32

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// ValidateName reports why name cannot name a lab: it must be a DNS-label
// style name of at most MaxNameLen characters. Every path and namespace of
// the lab derives from it, so this is checked before anything else.
func ValidateName(name string) error {
	if len(name) > MaxNameLen {
		return fmt.Errorf("lab name %q is longer than %d characters", name, MaxNameLen)
	}
	if !nameRE.MatchString(name) {
		return fmt.Errorf("lab name %q must be lower-case letters, digits and '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// validateStateRoot requires an absolute path that is not the filesystem
// root: `lab down` removes directories below it.
func validateStateRoot(root string) error {
	if !filepath.IsAbs(root) || filepath.Clean(root) == "/" {
		return fmt.Errorf("state root %q must be an absolute path below /", root)
	}
	return nil
}

// under joins elems below root and verifies that the result stays strictly
// inside root: each element must be one plain path component (no
// separator, no "." or "..", not empty). Every path built from a name goes
// through it.
func under(root string, elems ...string) (string, error) {
	if len(elems) == 0 {
		return "", errors.New("no path below " + root)
	}
	for _, e := range elems {
		if e == "" || e == "." || e == ".." || strings.ContainsAny(e, "/\x00") {
			return "", fmt.Errorf("%q is not a file name below %s", e, root)
		}
	}
	p := filepath.Join(append([]string{root}, elems...)...)
	rel, err := filepath.Rel(root, p)
	if err != nil || rel == "." || !filepath.IsLocal(rel) {
		return "", fmt.Errorf("%s is not below %s", p, root)
	}
	return p, nil
}
