// Package workload decides what process runs for a container in the lab,
// and implements the built-in programs that stand in for well-known images,
// so that manifests written for real clusters run unchanged:
//
//   - registry.k8s.io/e2e-test-images/agnhost: netexec, serve-hostname,
//     porter and pause, with the upstream flags and endpoints;
//   - registry.k8s.io/pause and similar: pause;
//   - nginx- and httpd-like images: an HTTP server on port 80 answering with
//     the pod's name.
//
// Any other image runs its command and args when that program exists on the
// machine; otherwise the container cannot run and the pod fails with the
// reason. Built-in programs run as `flatnet workload <program> [args]`.
//
// Serve and ServePackets are the accept and read loops their servers run
// until their context ends; the lab's API forwarder and the real-kernel
// tests' servers run on them too.
package workload

import (
	"fmt"
	"os/exec"
	"path"
	"strings"
)

// Environment variables the kubelet sets for every container: built-in
// programs answer with the pod's name, as the real images answer with the
// container's hostname.
const (
	EnvPodName      = "FLATNET_POD_NAME"
	EnvPodNamespace = "FLATNET_POD_NAMESPACE"
	EnvPodIP        = "FLATNET_POD_IP"
)

// Resolve returns the argv for a container. self is the flatnet binary.
func Resolve(self, image string, command, args []string) ([]string, error) {
	repo := imageRepo(image)
	base := path.Base(repo)
	builtin := func(program string, rest ...string) []string {
		return append([]string{self, "workload", program}, rest...)
	}
	switch {
	case base == "agnhost":
		argv := append(append([]string{}, command...), args...)
		if len(argv) > 0 && path.Base(argv[0]) == "agnhost" {
			argv = argv[1:]
		}
		if len(argv) == 0 {
			return nil, fmt.Errorf("image %s: agnhost needs a subcommand (netexec, serve-hostname, porter, pause)", image)
		}
		switch argv[0] {
		case "netexec", "serve-hostname", "porter", "pause":
			return builtin(argv[0], argv[1:]...), nil
		}
		return nil, fmt.Errorf("image %s: agnhost subcommand %q is not built into the lab (netexec, serve-hostname, porter, pause are)", image, argv[0])
	case base == "pause" && len(command) == 0:
		return builtin("pause"), nil
	case (strings.Contains(base, "nginx") || strings.Contains(base, "httpd")) && len(command) == 0:
		return builtin("http-hostname", "--port=80"), nil
	}
	if len(command) == 0 {
		return nil, fmt.Errorf("image %s has no built-in program in the lab and the container names no command", image)
	}
	if _, err := exec.LookPath(command[0]); err != nil {
		return nil, fmt.Errorf("image %s has no built-in program in the lab and its command %q does not exist on this machine", image, command[0])
	}
	return append(append([]string{}, command...), args...), nil
}

// imageRepo strips the tag and digest: "registry.k8s.io/e2e-test-images/agnhost:2.53" -> ".../agnhost".
func imageRepo(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}
