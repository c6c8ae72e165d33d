package deploy

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/flatnet-io/flatnet/internal/buildinfo"
)

// image is what every container of the DaemonSet runs: the release this
// tree is, never a moving tag.
const image = "ghcr.io/flatnet-io/flatnet:" + buildinfo.Release

// allowedCaps are the capabilities each container may add back after
// dropping all. flatnetd needs CAP_NET_ADMIN alone: routes over netlink,
// nftables (its own netlink and the nft binary it runs), conntrack deletes
// over netlink. It opens no raw socket (no NET_RAW), enters no namespace
// (no SYS_ADMIN), listens on ports above 1024 (no NET_BIND_SERVICE), and
// writes files only where root owns them (no DAC_OVERRIDE). Its sysctl
// writes need no capability either; they are only tried when a value is off
// (see daemonset.yaml). install-cni copies a file into a root-owned host
// directory, as root.
var allowedCaps = map[string][]corev1.Capability{
	"flatnetd":    {"NET_ADMIN"},
	"install-cni": nil,
}

func daemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	strict := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	obj, _, err := strict.Decode(DaemonSet, nil, nil)
	if err != nil {
		t.Fatalf("daemonset.yaml: %v", err)
	}
	ds, ok := obj.(*appsv1.DaemonSet)
	if !ok {
		t.Fatalf("daemonset.yaml holds a %T", obj)
	}
	return ds
}

func containers(ds *appsv1.DaemonSet) []corev1.Container {
	return append(slices.Clone(ds.Spec.Template.Spec.InitContainers), ds.Spec.Template.Spec.Containers...)
}

func TestDaemonSetImageIsTheRelease(t *testing.T) {
	for _, c := range containers(daemonSet(t)) {
		if c.Image != image {
			t.Errorf("container %s runs %q, want %q (buildinfo.Release)", c.Name, c.Image, image)
		}
		if c.ImagePullPolicy == corev1.PullAlways {
			t.Errorf("container %s pulls its image always; a release tag does not move", c.Name)
		}
	}
}

func TestDaemonSetLeastPrivilege(t *testing.T) {
	for _, c := range containers(daemonSet(t)) {
		allowed, known := allowedCaps[c.Name]
		if !known {
			t.Errorf("container %s: no capabilities decided for it in this test", c.Name)
		}
		sc := c.SecurityContext
		if sc == nil || sc.Capabilities == nil {
			t.Errorf("container %s: no securityContext.capabilities", c.Name)
			continue
		}
		if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("container %s drops %v, want [ALL]", c.Name, sc.Capabilities.Drop)
		}
		for _, add := range sc.Capabilities.Add {
			if !slices.Contains(allowed, add) {
				t.Errorf("container %s adds %s; allowed: %v", c.Name, add, allowed)
			}
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("container %s is privileged", c.Name)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("container %s: readOnlyRootFilesystem is not true", c.Name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("container %s: allowPrivilegeEscalation is not false", c.Name)
		}
	}
}

// TestDaemonSetListensOnLoopback: the pod shares the node's network, and
// /metrics and /healthz have no authentication, so flatnetd binds both to
// the node's loopback, explicitly (the flag's default is every address).
func TestDaemonSetListensOnLoopback(t *testing.T) {
	for _, c := range daemonSet(t).Spec.Template.Spec.Containers {
		for _, flag := range []string{"--metrics-addr", "--health-addr"} {
			v, ok := flagValue(c.Args, flag)
			if !ok {
				t.Errorf("container %s: no %s (the default listens on every address)", c.Name, flag)
				continue
			}
			host, _, err := net.SplitHostPort(v)
			addr, perr := netip.ParseAddr(host)
			if err != nil || perr != nil || !addr.IsLoopback() {
				t.Errorf("container %s: %s=%s is not a loopback address", c.Name, flag, v)
			}
		}
	}
}

// TestDaemonSetMountsAreUsed: every volume is mounted, and every mount is a
// path that its container's command line names (flatnetd's --cni-conf-dir,
// the installer's target directory); nothing is mounted in case.
func TestDaemonSetMountsAreUsed(t *testing.T) {
	ds := daemonSet(t)
	mounted := map[string]bool{}
	for _, c := range containers(ds) {
		cmdline := strings.Join(append(slices.Clone(c.Command), c.Args...), " ")
		for _, m := range c.VolumeMounts {
			mounted[m.Name] = true
			if !strings.Contains(cmdline, m.MountPath) {
				t.Errorf("container %s mounts %s at %s, which its command line does not use", c.Name, m.Name, m.MountPath)
			}
		}
	}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if !mounted[v.Name] {
			t.Errorf("volume %s is mounted by no container", v.Name)
		}
	}
}

// flagValue is the value of --name=value in args.
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
	}
	return "", false
}
