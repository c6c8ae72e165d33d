// Package cnitest is the harness of the real-kernel CNI tests and the CNI
// benchmark: it builds flatnet-cni and pinned reference plugins, and makes
// throwaway nodes (network namespaces) with pods wired through libcni.
//
// Everything it creates is named fn-<tag>-... and removed by the cleanup it
// registers, on failure too; Leaks reports anything of the tag still present.
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
