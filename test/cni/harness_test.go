// Package cni_test runs flatnet-cni against the real kernel: every test makes
// a node (a network namespace holding the bridge) and pods (namespaces), and
// drives the plugin through libcni exactly as containerd does, or runs it by
// hand. Nodes and pods are internal/cnitest's, whose leak check fails a test
// that leaves a host veth, an IPAM record or a namespace behind. Root is
// needed; without it every test skips with the reason.
package cni_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/flatnet-io/flatnet/internal/cni"
	"github.com/flatnet-io/flatnet/internal/cnitest"
	"github.com/flatnet-io/flatnet/internal/ipam"
	"github.com/flatnet-io/flatnet/internal/netns"
)

// suite builds flatnet-cni and the reference plugins the chaining tests
// use, and fails the run if a namespace of it is left.
var suite = cnitest.NewSuite("t")

func TestMain(m *testing.M) { os.Exit(suite.Main(m, "meta/portmap", "meta/bandwidth")) }

func requireRoot(t *testing.T) { t.Helper(); suite.Require(t) }

// node is the harness's node with this package's ways of running the
// plugin by hand.
type node struct{ *cnitest.Node }

// flatnetConf is the plugin entry used by most tests, in the form.
func flatnetConf(dataDir string) string {
	return fmt.Sprintf(`{"type": "flatnet-cni", "bridge": "fn0", "ipam": {"ranges": [[{"subnet": "10.99.0.0/24"}]], "dataDir": %q}}`, dataDir)
}

// newNode makes a node whose conflist has the given cniVersion and plugins;
// plugins receives the IPAM data directory to use.
func newNode(t *testing.T, cniVersion string, plugins func(dataDir string) string) node {
	t.Helper()
	return node{suite.NewNode(t, cniVersion, plugins)}
}

// pluginCmd is flatnet-cni run by hand as a runtime would run it, with env
// as its whole CNI environment; wrap prefixes the command line (for example
// "setpriv ... --").
func pluginCmd(env map[string]string, stdin string, wrap ...string) *exec.Cmd {
	argv := append(slices.Clone(wrap), filepath.Join(suite.PluginDir, "flatnet-cni"))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(stdin)
	return cmd
}

// start starts cmd inside the node's namespace; the child stays there.
func (n node) start(cmd *exec.Cmd) error {
	return netns.Do(n.NS, cmd.Start)
}

// execPlugin runs flatnet-cni by hand inside the node and returns its stdout
// and whether it failed.
func (n node) execPlugin(t *testing.T, env map[string]string, stdin string, wrap ...string) ([]byte, error) {
	t.Helper()
	var stdout bytes.Buffer
	cmd := pluginCmd(env, stdin, wrap...)
	cmd.Stdout = &stdout
	if err := n.start(cmd); err != nil {
		return nil, err
	}
	err := cmd.Wait()
	return stdout.Bytes(), err
}

// pluginStdin is the network configuration flatnetConf gives the plugin
// through libcni, for tests that run the plugin by hand.
func pluginStdin(dataDir string) string {
	return `{"cniVersion": "1.1.0", "name": "fntest", ` + strings.TrimPrefix(flatnetConf(dataDir), "{")
}

// allocateAsIfCrashed claims an address for containerID's eth0 in the
// node's IPAM store (flatnetConf's), as a plugin killed right after
// allocating leaves it, and returns it.
func (n node) allocateAsIfCrashed(t *testing.T, containerID string) netip.Addr {
	t.Helper()
	cfg, err := cni.ParseConfig([]byte(pluginStdin(n.DataDir)))
	if err != nil {
		t.Fatal(err)
	}
	alloc, err := ipam.New(cfg.IPAM)
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	got, err := alloc.Allocate(ipam.Owner{ContainerID: containerID, IfName: "eth0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return got[0].Addr
}

// cniError extracts the CNI error code from what libcni or the plugin returned.
func cniError(t *testing.T, err error) *types.Error {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v (%T), want a CNI error", err, err)
	}
	return e
}

func podIP(t *testing.T, r *current.Result) string {
	t.Helper()
	if len(r.IPs) == 0 {
		t.Fatal("result has no IPs")
	}
	return r.IPs[0].Address.IP.String()
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func hasPrefixAny(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
