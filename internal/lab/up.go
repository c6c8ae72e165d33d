package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Options configure `flatnet lab up`.
type Options struct {
	Name      string
	Nodes     int
	StateRoot string
	BinDir    string // flatnet, flatnetd, flatnet-cni, flatnet-controlplane
	SourceDir string // repository root, to build the control plane when missing
	NoProxy   bool   // flatnetd without its service proxy (to run another one)
	Out       io.Writer
}

func step(out io.Writer, format string, args ...any) {
	fmt.Fprintf(out, "==> "+format+"\n", args...)
}

// Validate reports every problem with the options at once.
func (o Options) Validate() error {
	var errs []error
	if _, err := NewLayout(o.StateRoot, o.Name, o.Nodes); err != nil {
		errs = append(errs, err)
	}
	if o.Nodes < 1 || o.Nodes > MaxNodes {
		errs = append(errs, fmt.Errorf("a lab has 1 to %d nodes, not %d", MaxNodes, o.Nodes))
	}
	return errors.Join(errs...)
}

// Up brings a lab up, or completes one that is partly up. Each step checks
// what is there and completes it, so an Up killed at any point is finished
// by the next.
func Up(ctx context.Context, o Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (network namespaces)")
	}
	l, _ := NewLayout(o.StateRoot, o.Name, o.Nodes) // checked by Validate
	if err := checkBinaries(o); err != nil {
		return err
	}
	unlock, err := lock(l)
	if err != nil {
		return err
	}
	defer unlock()
	s, err := record(l, o)
	if err != nil {
		return err
	}
	step(o.Out, "certificates and kubeconfigs in %s", l.Path("pki"))
	if err := ensurePKI(l); err != nil {
		return fmt.Errorf("PKI: %w", err)
	}
	if err := ensureKubeconfigs(l); err != nil {
		return fmt.Errorf("kubeconfigs: %w", err)
	}
	step(o.Out, "underlay: namespaces %s{switch,cp,node-1..%d} on bridge br0 (%s, %s)", l.Prefix(), o.Nodes, Underlay, Underlay6)
	if err := ensureTopology(l); err != nil {
		return fmt.Errorf("topology: %w", err)
	}
	client, err := upControlPlane(ctx, l, o, &s)
	if err != nil {
		return err
	}
	if err := upNodes(ctx, l, client, o); err != nil {
		return err
	}
	kubectl := binPath(o.BinDir, "kubectl")
	if _, err := os.Lstat(kubectl); err != nil {
		_ = os.Symlink("flatnet-controlplane", kubectl)
	}
	step(o.Out, "lab %q is up: %d nodes Ready", o.Name, o.Nodes)
	fmt.Fprintf(o.Out, "\n  export KUBECONFIG=%s\n  export PATH=%s:$PATH   # kubectl\n  kubectl get nodes,pods -o wide\n\n", l.Kubeconfig("admin"), o.BinDir)
	return nil
}

// checkBinaries builds the control plane if needed and checks that every
// binary the lab runs is there.
func checkBinaries(o Options) error {
	if err := ensureControlPlaneBinary(o); err != nil {
		return err
	}
	for _, b := range []string{"flatnet", "flatnetd", "flatnet-cni", "flatnet-controlplane"} {
		if _, err := os.Stat(binPath(o.BinDir, b)); err != nil {
			return fmt.Errorf("%s missing in %s (run ./scripts/build.sh): %w", b, o.BinDir, err)
		}
	}
	return nil
}

// upControlPlane starts etcd, the API server and its forwarder, then, once
// the API server is ready, the controllers and flatnet's RBAC.
func upControlPlane(ctx context.Context, l Layout, o Options, s *saved) (*kubernetes.Clientset, error) {
	step(o.Out, "control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler (logs in %s)", l.Path("logs"))
	procs := NewProcesses(l)
	cp := controlPlane(l, o.BinDir)
	for _, c := range cp[:2] { // etcd, kube-apiserver
		if err := procs.start(c); err != nil {
			return nil, err
		}
	}
	if err := ensureForwarder(l, o.BinDir, s); err != nil {
		return nil, err
	}
	client, err := Client(l)
	if err != nil {
		return nil, err
	}
	if err := waitAPIServer(ctx, client, 3*time.Minute); err != nil {
		return nil, fmt.Errorf("%w (see %s)", err, l.Path("logs", "kube-apiserver.log"))
	}
	// The controllers need the RBAC the API server bootstraps once ready.
	for _, c := range cp[2:] {
		if err := procs.start(c); err != nil {
			return nil, err
		}
	}
	if err := applyRBAC(ctx, client); err != nil {
		return nil, fmt.Errorf("apply flatnet RBAC: %w", err)
	}
	return client, nil
}

// upNodes starts each node's flatnetd and lab kubelet and waits until every
// node is Ready.
func upNodes(ctx context.Context, l Layout, client *kubernetes.Clientset, o Options) error {
	step(o.Out, "nodes: lab kubelet and flatnetd on each of %d nodes", o.Nodes)
	procs := NewProcesses(l)
	for i := 1; i <= o.Nodes; i++ {
		if err := os.MkdirAll(l.NodeDir(i), 0o755); err != nil {
			return err
		}
		for _, c := range nodeComponents(l, o.BinDir, i, !o.NoProxy) {
			if err := procs.start(c); err != nil {
				return err
			}
		}
	}
	return waitNodesReady(ctx, client, o.Nodes, 3*time.Minute)
}

func waitAPIServer(ctx context.Context, c *kubernetes.Clientset, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		body, err := c.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && strings.TrimSpace(string(body)) == "ok" {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("kube-apiserver not ready after %s: %v", timeout, last)
}

func waitNodesReady(ctx context.Context, c *kubernetes.Clientset, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	ready := 0
	for time.Now().Before(deadline) {
		nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err == nil {
			ready = 0
			for _, node := range nodes.Items {
				for _, cond := range node.Status.Conditions {
					if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
						ready++
					}
				}
			}
			if ready >= n {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("only %d of %d nodes Ready after %s", ready, n, timeout)
}

// ensureControlPlaneBinary builds flatnet-controlplane from the repository's
// lab/controlplane module when it is missing; `go build -v` prints each
// package as it compiles, so the first (multi-minute) build shows progress.
func ensureControlPlaneBinary(o Options) error {
	target := binPath(o.BinDir, "flatnet-controlplane")
	if _, err := os.Stat(target); err == nil {
		return nil
	}
	mod := filepath.Join(o.SourceDir, "lab", "controlplane")
	if _, err := os.Stat(filepath.Join(mod, "go.mod")); err != nil {
		return fmt.Errorf("flatnet-controlplane missing and no source at %s to build it", mod)
	}
	step(o.Out, "building flatnet-controlplane from Kubernetes v1.37.2 (first build: several minutes)")
	cmd := exec.Command("go", "build", "-v", "-o", target, ".")
	cmd.Dir = mod
	cmd.Stdout, cmd.Stderr = o.Out, o.Out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build flatnet-controlplane: %w", err)
	}
	return nil
}
