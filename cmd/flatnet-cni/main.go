// Command flatnet-cni is flatnet's CNI plugin; a container runtime execs it
// with the CNI environment and the network configuration on stdin.
package main

import (
	"github.com/flatnet-io/flatnet/internal/buildinfo"
	"github.com/flatnet-io/flatnet/internal/cni"
)

func main() {
	cni.Main("flatnet-cni " + buildinfo.Version + ": bridge + veth + built-in IPAM (CNI 1.1.0)")
}
