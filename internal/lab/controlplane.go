package lab

import (
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// controlPlane is the upstream control plane, all in the "cp" namespace.
func controlPlane(l Layout, binDir string) []component {
	cp := binPath(binDir, "flatnet-controlplane")
	pki := func(name string) string { return l.Path("pki", name) }
	kc := func(owner string) string { return l.Kubeconfig(owner) }
	return []component{
		{"etcd", "cp", []string{cp, "etcd", "--data-dir", l.Path("etcd"),
			"--listen-client-urls", "http://127.0.0.1:2379", "--listen-peer-urls", "http://127.0.0.1:2380"}},
		{"kube-apiserver", "cp", []string{cp, "kube-apiserver",
			"--etcd-servers=http://127.0.0.1:2379",
			"--bind-address=0.0.0.0", "--secure-port=6443", "--advertise-address=" + APIServerIP.String(),
			"--tls-cert-file=" + pki("apiserver.crt"), "--tls-private-key-file=" + pki("apiserver.key"),
			"--client-ca-file=" + pki("ca.crt"),
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + pki("sa.pub"), "--service-account-signing-key-file=" + pki("sa.key"),
			"--service-cluster-ip-range=" + ServiceCIDRs(),
			"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true", "--profiling=false", "--cert-dir=" + l.Path("pki"),
		}},
		{"kube-controller-manager", "cp", []string{cp, "kube-controller-manager",
			"--kubeconfig=" + kc("controller-manager"),
			"--authentication-kubeconfig=" + kc("controller-manager"), "--authorization-kubeconfig=" + kc("controller-manager"),
			"--bind-address=127.0.0.1", "--leader-elect=false",
			"--allocate-node-cidrs=true", "--cluster-cidr=" + ClusterCIDRs(),
			"--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64",
			"--service-cluster-ip-range=" + ServiceCIDRs(),
			"--root-ca-file=" + pki("ca.crt"), "--service-account-private-key-file=" + pki("sa.key"),
			"--use-service-account-credentials=true",
			"--cluster-signing-cert-file=" + pki("ca.crt"), "--cluster-signing-key-file=" + pki("ca.key"),
			"--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
		}},
		{"kube-scheduler", "cp", []string{cp, "kube-scheduler",
			"--kubeconfig=" + kc("scheduler"),
			"--authentication-kubeconfig=" + kc("scheduler"), "--authorization-kubeconfig=" + kc("scheduler"),
			"--bind-address=127.0.0.1", "--leader-elect=false",
		}},
	}
}

// nodeComponents are the per-node processes: the lab kubelet and flatnetd,
// both inside the node's namespace.
func nodeComponents(l Layout, binDir string, i int, proxy bool) []component {
	n := l.NodeName(i)
	dir := l.NodeDir(i)
	return []component{
		{"flatnetd-" + n, n, []string{binPath(binDir, "flatnetd"),
			"--kubeconfig=" + l.Kubeconfig("flatnetd-"+n), "--node-name=" + n,
			"--cni-conf-dir=" + dir + "/cni/net.d", "--ipam-data-dir=" + dir + "/ipam",
			"--cluster-cidr=" + ClusterCIDRs(),
			"--health-addr=127.0.0.1:9465", "--metrics-addr=127.0.0.1:9466",
			"--proxy=" + strconv.FormatBool(proxy),
		}},
		{"kubelet-" + n, n, []string{binPath(binDir, "flatnet"), "lab", "kubelet",
			"--kubeconfig=" + l.Kubeconfig("kubelet-"+n), "--node-name=" + n,
			"--node-ip=" + joinAddrs(NodeIPs(i)), "--state-dir=" + dir,
			"--cni-conf-dir=" + dir + "/cni/net.d", "--cni-bin-dir=" + binDir,
			"--netns-prefix=" + l.PodNSPrefix(n), "--max-pods=" + strconv.Itoa(110),
		}},
	}
}

// AgentArgs is the command line of node i's flatnetd, with the service proxy
// on or off (the Service benchmark swaps proxies on a node with it).
func AgentArgs(l Layout, binDir string, i int, proxy bool) []string {
	return nodeComponents(l, binDir, i, proxy)[0].argv
}

// joinAddrs is a comma-separated flag value.
func joinAddrs(as []netip.Addr) string {
	parts := make([]string, len(as))
	for i, a := range as {
		parts[i] = a.String()
	}
	return strings.Join(parts, ",")
}

// binPath is the path of one of the lab's binaries.
func binPath(binDir, name string) string { return filepath.Join(binDir, name) }
