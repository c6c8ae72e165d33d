// Package demo is `flatnet demo`: one node made of a network namespace,
// three pods wired to it by flatnet-cni through libcni (exactly as a
// container runtime calls it), their addresses printed, every pod pinging
// every other pod and the gateway, then everything removed again.
//
// State it makes, all named fn-demo-* and removed on exit or failure: the
// namespaces fn-demo-node and fn-demo-pod-{1,2,3}, and a temporary state
// directory (conflist, IPAM store, libcni result cache). The machine's own
// network namespace is never touched: the bridge lives in fn-demo-node.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/probe"
)

// Options configure the demo.
type Options struct {
	PluginDir string // directory holding flatnet-cni
	Pods      int
	Subnet    string
	Out       io.Writer
}

const prefix = "fn-demo-"

// Run executes the demo; it always removes what it made before returning.
func Run(ctx context.Context, o Options) (err error) {
	if o.Pods < 2 {
		return errors.New("the demo needs at least two pods")
	}
	if _, err := os.Stat(filepath.Join(o.PluginDir, "flatnet-cni")); err != nil {
		return fmt.Errorf("flatnet-cni not found in %s (run `make build`): %w", o.PluginDir, err)
	}
	if err := Cleanup(); err != nil { // leftovers of an interrupted run
		return err
	}
	state, err := os.MkdirTemp("", "flatnet-demo-")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, Cleanup(), os.RemoveAll(state)) }()

	node, err := netns.Create(prefix + "node")
	if err != nil {
		return err
	}
	conflist := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "flatnet-demo", "plugins": [
	  {"type": "flatnet-cni", "bridge": "fn0", "ipam": {"ranges": [[{"subnet": %q}]], "dataDir": %q}}]}`,
		o.Subnet, filepath.Join(state, "ipam"))
	rt, err := cniruntime.New(node, []string{o.PluginDir}, filepath.Join(state, "cache"), []byte(conflist))
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "node namespace %s, bridge fn0, pod CIDR %s\n", node, o.Subnet)

	var pods []pod
	defer func() {
		for _, p := range pods {
			err = errors.Join(err, rt.Del(context.WithoutCancel(ctx), p.Pod))
		}
	}()
	for i := 1; i <= o.Pods; i++ {
		p, err := addPod(ctx, rt, fmt.Sprintf("pod-%d", i), o.Out)
		if p != nil {
			pods = append(pods, *p)
		}
		if err != nil {
			return err
		}
	}
	if failed := pingAll(pods, o.Out); failed > 0 {
		return fmt.Errorf("%d pings failed", failed)
	}
	fmt.Fprintln(o.Out, "all pods reach each other and the gateway; cleaning up")
	return nil
}

// pod is one demo pod: its attachment, address and gateway.
type pod struct {
	cniruntime.Pod
	ip netip.Addr
	gw netip.Addr
}

// addPod makes a pod's namespace and wires it with CNI ADD; the pod is
// returned once ADD succeeded, for the caller to DEL, even when its result
// is unusable.
func addPod(ctx context.Context, rt *cniruntime.Runtime, name string, out io.Writer) (*pod, error) {
	path, err := netns.Create(prefix + name)
	if err != nil {
		return nil, err
	}
	p := &pod{Pod: cniruntime.Pod{ID: "demo-" + name, NetNS: path, Namespace: "default", Name: name, UID: name}}
	start := time.Now()
	res, err := rt.Add(ctx, p.Pod)
	if err != nil {
		return nil, fmt.Errorf("CNI ADD %s: %w", name, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil || len(r.IPs) == 0 {
		return p, fmt.Errorf("CNI ADD %s: unusable result: %v", name, err)
	}
	p.ip, _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	p.gw, _ = netip.AddrFromSlice(r.IPs[0].Gateway.To4())
	fmt.Fprintf(out, "  %-6s %-15s eth0 %s  (ADD %s)\n", name, r.IPs[0].Address.String(), r.Interfaces[1].Mac, time.Since(start).Round(100*time.Microsecond))
	return p, nil
}

// pingAll pings from every pod its gateway and every other pod, and returns
// how many pings failed.
func pingAll(pods []pod, out io.Writer) int {
	failed := 0
	for _, from := range pods {
		targets := []netip.Addr{from.gw}
		for _, to := range pods {
			if to.ip != from.ip {
				targets = append(targets, to.ip)
			}
		}
		for _, dst := range targets {
			rtt, err := probe.Ping(from.NetNS, dst, 2*time.Second)
			if err != nil {
				failed++
				fmt.Fprintf(out, "  ping %s -> %s: FAILED: %v\n", from.Name, dst, err)
				continue
			}
			fmt.Fprintf(out, "  ping %s -> %-15s %s\n", from.Name, dst, rtt.Round(time.Microsecond))
		}
	}
	return failed
}

// Cleanup removes every namespace the demo may have left behind.
func Cleanup() error {
	_, err := netns.DeleteAll(prefix)
	return err
}
