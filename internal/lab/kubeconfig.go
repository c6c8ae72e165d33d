package lab

import (
	"os"
	"path/filepath"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// KubeProxyIdentity owns the kubeconfig upstream kube-proxy runs with.
const KubeProxyIdentity = "kube-proxy"

// identity is one client of the API server: its certificate subject and the
// kubeconfig it gets.
type identity struct {
	owner string // kubeconfig and certificate file name
	cn    string
	orgs  []string
}

// identities are the clients of the lab's API server: the admin, the
// controllers, upstream kube-proxy, and each node's kubelet and flatnetd.
func identities(l Layout) []identity {
	ids := []identity{
		{"admin", "kubernetes-admin", []string{"system:masters"}},
		{"controller-manager", "system:kube-controller-manager", nil},
		{"scheduler", "system:kube-scheduler", nil},
		// Upstream kube-proxy, for the Service benchmark: the API server's
		// bootstrap RBAC binds ClusterRole system:node-proxier to this user
		// (ClusterRoleBinding system:node-proxier), as on a cluster set up by
		// hand; kubeadm binds the same role to a ServiceAccount instead.
		{KubeProxyIdentity, "system:kube-proxy", nil},
	}
	for i := 1; i <= l.Nodes; i++ {
		n := l.NodeName(i)
		ids = append(ids,
			identity{"kubelet-" + n, "system:node:" + n, []string{"system:nodes"}},
			// flatnetd authenticates as the ServiceAccount deploy/ binds its RBAC to.
			identity{"flatnetd-" + n, "system:serviceaccount:kube-system:flatnet", []string{"system:serviceaccounts", "system:serviceaccounts:kube-system"}},
		)
	}
	return ids
}

// ensureKubeconfigs writes a kubeconfig per identity, pointing at the API
// server's underlay address, with the credentials ensurePKI made (admin's
// is written by ensureForwarder and points at the forwarder). They are
// rewritten every time.
func ensureKubeconfigs(l Layout) error {
	for _, id := range identities(l) {
		if id.owner == "admin" {
			continue // written by ensureForwarder, pointing at the forwarder
		}
		if err := writeKubeconfig(l, id.owner, apiServerURL()); err != nil {
			return err
		}
	}
	return nil
}

// writeKubeconfig writes a kubeconfig with embedded credentials, so it can
// be copied anywhere.
func writeKubeconfig(l Layout, owner, server string) error {
	read := func(name string) ([]byte, error) { return os.ReadFile(l.Path("pki", name)) }
	ca, err := read("ca.crt")
	if err != nil {
		return err
	}
	cert, err := read(owner + ".crt")
	if err != nil {
		return err
	}
	key, err := read(owner + ".key")
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[l.Name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[owner] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts[l.Name] = &clientcmdapi.Context{Cluster: l.Name, AuthInfo: owner}
	cfg.CurrentContext = l.Name
	if err := os.MkdirAll(filepath.Dir(l.Kubeconfig(owner)), 0o700); err != nil {
		return err
	}
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	return writeFile(l.Kubeconfig(owner), b, 0o600)
}

// Client is an admin client of the lab's API server (through the forwarder).
func Client(l Layout) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", l.Kubeconfig("admin"))
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 100, 200
	return kubernetes.NewForConfig(cfg)
}
