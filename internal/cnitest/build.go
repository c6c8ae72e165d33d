// Package cnitest is the harness the real-kernel test packages share
// (test/cni, test/proxy and the NetworkPolicy tests to come); the CNI
// benchmark uses its builds. It provides:
//
//   - Builds: ModuleRoot, BuildFlatnet (flatnet-cni) and BuildReference
//     (containernetworking/plugins at ReferenceVersion, from the module
//     proxy).
//   - Suite, a test package's TestMain (Main): without root every test
//     skips with the reason (Require); otherwise flatnet-cni and the
//     reference plugins asked for are built once into PluginDir. NewName
//     hands out unique names fn-<tag><pid>-<serial>.
//   - Node (Suite.NewNode), a test's node: the network namespace
//     <name>-node with a libcni runtime (RT) over a conflist of the suite's
//     plugins (network Network, IPAM store in DataDir), run inside that
//     namespace as containerd runs them; pods in namespaces <name>-<pod>
//     attached and detached through libcni (Pod, Add, AddPod, Del); an
//     outside host linked to the node (Outside); netlink handles (Handle,
//     HandleAt); and what the plugin holds in the node (PluginVeths,
//     Records, AssertClean).
//   - The leak check, which fails the test. When a test ends, its pods
//     still attached are DELeted and their namespaces removed; then a host
//     veth or IPAM record of the plugin left in the node, or a namespace of
//     the node still there, fails the test, and the node's namespace is
//     removed. After the whole run, any namespace with the suite's prefix
//     fails the run and is removed.
package cnitest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ReferenceVersion is the containernetworking/plugins release the tests chain
// with and the benchmark compares against.
const ReferenceVersion = "v1.10.0"

// ModuleRoot is the directory of flatnet's go.mod.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the flatnet module")
	}
	return filepath.Dir(mod), nil
}

// BuildFlatnet builds flatnet-cni into dir.
func BuildFlatnet(dir string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "flatnet-cni"), "./cmd/flatnet-cni")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build flatnet-cni: %w\n%s", err, out)
	}
	return nil
}

// BuildReference builds reference plugins (e.g. "main/bridge",
// "ipam/host-local", "meta/portmap") of ReferenceVersion into dir, from the
// Go module proxy.
func BuildReference(dir string, plugins ...string) error {
	args := []string{"install"}
	for _, p := range plugins {
		args = append(args, "github.com/containernetworking/plugins/plugins/"+p+"@"+ReferenceVersion)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = os.TempDir() // outside flatnet's module: the pinned versions rule
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build reference plugins %v: %w\n%s", plugins, err, out)
	}
	return nil
}
