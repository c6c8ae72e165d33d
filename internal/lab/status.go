package lab

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Status prints the lab's components, nodes and pods.
func Status(ctx context.Context, stateRoot, name string, out io.Writer) error {
	l, s, err := open(stateRoot, name)
	if err != nil {
		return err
	}
	printComponents(l, s.BinDir, out)
	client, err := Client(l)
	if err != nil {
		return err
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	printNodes(nodes.Items, out)
	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	return printPods(pods.Items, out)
}

// printComponents lists every process of the lab and whether it runs.
func printComponents(l Layout, binDir string, out io.Writer) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "COMPONENT\tNAMESPACE\tPID\tSTATE")
	procs := NewProcesses(l)
	comps := append(controlPlane(l, binDir), component{name: "api-forwarder"})
	for i := 1; i <= l.Nodes; i++ {
		comps = append(comps, nodeComponents(l, binDir, i, true)...)
	}
	for _, c := range comps {
		pid, ok := procs.running(c.name)
		state, ns := "stopped", "(machine)"
		if ok {
			state = "running"
		}
		if c.ns != "" {
			ns = l.NS(c.ns)
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", c.name, ns, pid, state)
	}
	_ = w.Flush()
}

func printNodes(nodes []corev1.Node, out io.Writer) {
	fmt.Fprintln(out)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tREADY\tINTERNAL-IP\tPOD-CIDR")
	for _, n := range nodes {
		ready := corev1.ConditionFalse
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				ready = c.Status
			}
		}
		var ips []string
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				ips = append(ips, a.Address)
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", n.Name, ready, strings.Join(ips, ","), strings.Join(n.Spec.PodCIDRs, ","))
	}
	_ = w.Flush()
}

func printPods(pods []corev1.Pod, out io.Writer) error {
	sort.Slice(pods, func(i, j int) bool {
		return pods[i].Namespace+"/"+pods[i].Name < pods[j].Namespace+"/"+pods[j].Name
	})
	fmt.Fprintln(out)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "POD\tNODE\tPHASE\tIPS")
	for _, p := range pods {
		var ips []string
		for _, ip := range p.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		fmt.Fprintf(w, "%s/%s\t%s\t%s\t%s\n", p.Namespace, p.Name, p.Spec.NodeName, p.Status.Phase, strings.Join(ips, ","))
	}
	return w.Flush()
}
