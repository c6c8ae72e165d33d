// Command flatnetd is flatnet's node agent.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/flatnet-io/flatnet/internal/agent"
	"github.com/flatnet-io/flatnet/internal/buildinfo"
)

func main() { os.Exit(run()) }

func run() int {
	o := agent.Defaults()
	fs := flag.NewFlagSet("flatnetd", flag.ContinueOnError)
	o.AddFlags(fs)
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if *version {
		fmt.Println("flatnetd", buildinfo.Version)
		return 0
	}
	if err := o.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "flatnetd:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, o, log); err != nil {
		log.Error("flatnetd failed", "err", err)
		return 1
	}
	return 0
}
