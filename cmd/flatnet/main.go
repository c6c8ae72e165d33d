// Command flatnet is the flatnet CLI: `flatnet demo` wires pods on one node
// through flatnet-cni and shows traffic flowing; `flatnet version`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/flatnet-io/flatnet/internal/buildinfo"
	"github.com/flatnet-io/flatnet/internal/demo"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	if len(args) == 0 {
		usage()
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "demo":
		return runDemo(ctx, args[1:])
	case "version":
		fmt.Println("flatnet", buildinfo.Version)
		return 0
	case "-h", "--help", "help":
		usage()
		return 0
	}
	fmt.Fprintf(os.Stderr, "flatnet: unknown command %q\n", args[0])
	usage()
	return 2
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: flatnet <command> [flags]

commands:
  demo      one node, pods wired by flatnet-cni via libcni, ping between them, clean up
  version   print the version
`)
}

func runDemo(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	self, _ := os.Executable()
	o := demo.Options{Out: os.Stdout}
	fs.StringVar(&o.PluginDir, "cni-bin-dir", filepath.Dir(self), "directory holding the flatnet-cni binary")
	fs.IntVar(&o.Pods, "pods", 3, "number of pods")
	fs.StringVar(&o.Subnet, "subnet", "10.99.0.0/24", "the node's pod CIDR")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := demo.Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "flatnet demo:", err)
		return 1
	}
	return 0
}
