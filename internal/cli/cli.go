// Package cli is the `flatnet` command line: demo, lab and the hidden
// helpers the lab starts (kubelet, forward, workload).
package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet-io/flatnet/internal/buildinfo"
	"github.com/flatnet-io/flatnet/internal/demo"
	"github.com/flatnet-io/flatnet/internal/kubelet"
	"github.com/flatnet-io/flatnet/internal/lab"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/nsexec"
	"github.com/flatnet-io/flatnet/internal/workload"
)

// Run executes the command line and returns the exit code.
func Run(args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "demo":
		return runDemo(ctx, args[1:])
	case "lab":
		return runLab(ctx, args[1:])
	case "policy":
		return runPolicy(ctx, args[1:], os.Stdout, os.Stderr)
	case "workload":
		stop() // built-in programs handle their own signals
		return workload.Main(args[1:])
	case "version":
		fmt.Println("flatnet", buildinfo.Version)
		return 0
	case "-h", "--help", "help":
		usage(os.Stdout)
		return 0
	}
	fmt.Fprintf(os.Stderr, "flatnet: unknown command %q\n", args[0])
	usage(os.Stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: flatnet <command> [flags]

commands:
  lab up [--nodes N] [--name NAME]   start a lab: real control plane, N nodes, flatnet on each
  lab status [--name NAME]           components, nodes and pods
  lab traffic [--name NAME]          deploy 6 netexec pods and show cross-node traffic without NAT
  lab kubeconfig [--name NAME]       path of the lab's admin kubeconfig
  lab exec NS/POD -- CMD...          run CMD in a pod's network namespace
  lab exec --node NODE -- CMD...     ... in a node's; --outside: on the outside host
  lab down [--name NAME]             remove everything the lab made
  policy log [--addr HOST:PORT]      connections this node's policies denied lately (flatnetd's log)
  demo                               one node, three pods wired by flatnet-cni; ping between them
  version                            print the version
`)
}

func binDir() string {
	self, err := os.Executable()
	if err != nil {
		return "bin"
	}
	return filepath.Dir(self)
}

func runDemo(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	o := demo.Options{Out: os.Stdout}
	fs.StringVar(&o.PluginDir, "cni-bin-dir", binDir(), "directory holding the flatnet-cni binary")
	fs.IntVar(&o.Pods, "pods", 3, "number of pods")
	fs.StringVar(&o.Subnet, "subnet", "10.99.0.0/24", "the node's pod CIDR")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	return check("demo", demo.Run(ctx, o))
}

func check(what string, err error) int {
	if err != nil {
		fmt.Fprintf(os.Stderr, "flatnet %s: %v\n", what, err)
		return 1
	}
	return 0
}

type labFlags struct {
	name, stateRoot string
}

func (l *labFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&l.name, "name", "lab", "lab name: lower-case letters, digits and '-', at most "+strconv.Itoa(lab.MaxNameLen)+" characters")
	fs.StringVar(&l.stateRoot, "state-root", lab.DefaultStateRoot, "directory of the labs' state (absolute)")
}

// parse parses args and refuses a lab name or state root that cannot hold
// a lab, before the command does anything; false means exit code 2.
func (l *labFlags) parse(fs *flag.FlagSet, args []string) bool {
	if err := fs.Parse(args); err != nil {
		return false
	}
	if _, err := lab.NewLayout(l.stateRoot, l.name, 0); err != nil {
		fmt.Fprintf(os.Stderr, "flatnet %s: %v\n", fs.Name(), err)
		return false
	}
	return true
}

func runLab(ctx context.Context, args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return 2
	}
	fs := flag.NewFlagSet("lab "+args[0], flag.ContinueOnError)
	var lf labFlags
	lf.add(fs)
	switch args[0] {
	case "up":
		return runUp(ctx, fs, &lf, args[1:])
	case "down":
		if !lf.parse(fs, args[1:]) {
			return 2
		}
		return check("lab down", lab.Down(lf.stateRoot, lf.name, os.Stdout))
	case "status":
		if !lf.parse(fs, args[1:]) {
			return 2
		}
		return check("lab status", lab.Status(ctx, lf.stateRoot, lf.name, os.Stdout))
	case "kubeconfig":
		if !lf.parse(fs, args[1:]) {
			return 2
		}
		l, err := lab.Open(lf.stateRoot, lf.name)
		if err != nil {
			return check("lab kubeconfig", err)
		}
		fmt.Println(l.Kubeconfig("admin"))
		return 0
	case "exec":
		return runExec(ctx, fs, &lf, args[1:])
	case "traffic":
		if !lf.parse(fs, args[1:]) {
			return 2
		}
		return check("lab traffic", lab.Traffic(ctx, lf.stateRoot, lf.name, os.Stdout))
	case "kubelet":
		return runKubelet(ctx, args[1:])
	case "forward":
		listen := fs.String("listen", "127.0.0.1:0", "loopback address to listen on")
		nsPath := fs.String("netns", "", "namespace to dial from")
		to := fs.String("to", "", "address to dial")
		_ = fs.String("state-dir", "", "the lab's state directory (marks the process as the lab's)")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		return check("lab forward", lab.Forward(ctx, *listen, *nsPath, *to))
	}
	fmt.Fprintf(os.Stderr, "flatnet lab: unknown command %q\n", args[0])
	return 2
}

func runUp(ctx context.Context, fs *flag.FlagSet, lf *labFlags, args []string) int {
	o := lab.Options{Out: os.Stdout, BinDir: binDir()}
	fs.IntVar(&o.Nodes, "nodes", 3, "number of nodes (1-"+strconv.Itoa(lab.MaxNodes)+")")
	fs.BoolVar(&o.NoProxy, "no-proxy", false, "run flatnetd without its service proxy")
	if !lf.parse(fs, args) {
		return 2
	}
	o.Name, o.StateRoot, o.SourceDir = lf.name, lf.stateRoot, filepath.Dir(o.BinDir)
	if err := o.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "flatnet lab up: %v\n", err)
		return 2
	}
	return check("lab up", lab.Up(ctx, o))
}

func runExec(ctx context.Context, fs *flag.FlagSet, lf *labFlags, args []string) int {
	node := fs.String("node", "", "run in this node's namespace")
	outside := fs.Bool("outside", false, "run on the outside host")
	if !lf.parse(fs, args) {
		return 2
	}
	rest := fs.Args()
	target := ""
	if *node == "" && !*outside && len(rest) > 0 && rest[0] != "--" {
		target, rest = rest[0], rest[1:]
	}
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	if len(rest) == 0 {
		fmt.Fprintln(os.Stderr, "usage: flatnet lab exec (NAMESPACE/POD | --node NODE | --outside) -- CMD...")
		return 2
	}
	l, err := lab.Open(lf.stateRoot, lf.name)
	if err != nil {
		return check("lab exec", err)
	}
	var nsPath string
	switch {
	case *outside:
		nsPath = netns.Path(l.NS("switch"))
	case *node != "":
		if _, ok := l.NodeIndex(*node); !ok {
			return check("lab exec", fmt.Errorf("lab %q has no node %q (it has node-1..node-%d)", l.Name, *node, l.Nodes))
		}
		nsPath = netns.Path(l.NS(*node))
	default:
		ns, name, ok := strings.Cut(target, "/")
		if !ok {
			ns, name = metav1.NamespaceDefault, target
		}
		client, err := lab.Client(l)
		if err != nil {
			return check("lab exec", err)
		}
		pod, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return check("lab exec", err)
		}
		nsPath = l.PodNetNS(pod)
	}
	cmd := nsexec.Command(nsPath, rest[0], rest[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(interface{ ExitCode() int }); ok && ee.ExitCode() > 0 {
			return ee.ExitCode()
		}
		return check("lab exec", err)
	}
	return 0
}

func runKubelet(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("kubelet", flag.ContinueOnError)
	var c kubelet.Config
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig")
	fs.StringVar(&c.NodeName, "node-name", "", "node name")
	fs.Func("node-ip", "node InternalIP, or one per family comma-separated (dual-stack; the first is the primary)", func(v string) error {
		c.NodeIPs = strings.Split(v, ",")
		return nil
	})
	fs.StringVar(&c.StateDir, "state-dir", "", "node state directory")
	fs.StringVar(&c.CNIConfDir, "cni-conf-dir", "", "CNI configuration directory")
	fs.StringVar(&c.CNIBinDir, "cni-bin-dir", "", "CNI plugin directory")
	fs.StringVar(&c.NetnsPrefix, "netns-prefix", "", "prefix of pod namespace names")
	fs.IntVar(&c.MaxPods, "max-pods", 110, "pod capacity")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("node", c.NodeName)
	k, err := kubelet.New(c, log)
	if err != nil {
		return check("lab kubelet", err)
	}
	return check("lab kubelet", k.Run(ctx))
}
