// Package cnitest is what the real-kernel test packages (test/cni,
// test/proxy) and the CNI benchmark share: it builds flatnet-cni and pinned
// reference plugins, and a Suite runs a test package's TestMain (skip
// without root, plugins built once, unique names) and fails the run when a
// network namespace of the suite is left behind, removing it.
//
// Every namespace a suite's tests create is named with its prefix,
// fn-<tag><pid>-..., and removed by the test's own cleanup, on failure
// too; the leak check is the net under that.
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
