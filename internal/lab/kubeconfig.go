package lab

import (
	"net"
	"os"
	"path/filepath"

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

func (l Layout) identities() []identity {
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

// ensurePKI makes the CA, the API server's serving certificate, the
// service-account key pair, and a client certificate plus kubeconfig per
// identity, pointing at the API server's underlay address (admin's is
// written by ensureForwarder and points at the forwarder). Certificates and
// keys present are kept; kubeconfigs are rewritten.
func (l Layout) ensurePKI() error {
	p, err := loadOrCreatePKI(l.Path("pki"))
	if err != nil {
		return err
	}
	dns := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}
	ips := []net.IP{net.ParseIP("127.0.0.1"), APIServerIP.AsSlice(), net.ParseIP("10.96.0.1")}
	if err := p.issue("apiserver", "kube-apiserver", nil, true, dns, ips); err != nil {
		return err
	}
	if err := p.serviceAccountKey(); err != nil {
		return err
	}
	for _, id := range l.identities() {
		if err := p.issue(id.owner, id.cn, id.orgs, false, nil, nil); err != nil {
			return err
		}
		if id.owner == "admin" {
			continue // written by ensureForwarder, pointing at the forwarder
		}
		if err := l.writeKubeconfig(id.owner, apiServerURL()); err != nil {
			return err
		}
	}
	return nil
}

// writeKubeconfig writes a kubeconfig with embedded credentials, so it can
// be copied anywhere.
func (l Layout) writeKubeconfig(owner, server string) error {
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
