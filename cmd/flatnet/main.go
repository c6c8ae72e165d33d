// Command flatnet is the flatnet CLI: the lab, the demo, and the helper
// programs the lab runs inside its namespaces.
package main

import (
	"os"

	"github.com/flatnet-io/flatnet/internal/cli"
	"github.com/flatnet-io/flatnet/internal/nsexec"
)

func main() {
	nsexec.MaybeRun() // when re-executed to enter a namespace, never returns
	os.Exit(cli.Run(os.Args[1:]))
}
