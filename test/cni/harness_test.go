// Package cni_test runs flatnet-cni against the real kernel: every test makes
// a node (a network namespace holding the bridge) and pods (namespaces), and
// drives the plugin through libcni exactly as containerd does. Root is needed;
// without it every test skips with the reason.
package cni_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/cnitest"
	"github.com/flatnet-io/flatnet/internal/ipam"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/podnet"
)

// suite builds flatnet-cni and the reference plugins the chaining tests
// use, and fails the run if a namespace of it is left.
var suite = cnitest.NewSuite("t")

func TestMain(m *testing.M) { os.Exit(suite.Main(m, "meta/portmap", "meta/bandwidth")) }

func requireRoot(t *testing.T) { t.Helper(); suite.Require(t) }

// node is one throwaway node: a namespace with the plugin's bridge inside,
// its own state directory and a libcni runtime bound to a conflist.
type node struct {
	t       *testing.T
	name    string
	ns      string
	dir     string
	dataDir string
	rt      *cniruntime.Runtime
}

// flatnetConf is the plugin entry used by most tests, in the form.
func flatnetConf(dataDir string) string {
	return fmt.Sprintf(`{"type": "flatnet-cni", "bridge": "fn0", "ipam": {"ranges": [[{"subnet": "10.99.0.0/24"}]], "dataDir": %q}}`, dataDir)
}

// newNode makes a node whose conflist has the given cniVersion and plugins;
// plugins receives the IPAM data directory to use.
func newNode(t *testing.T, cniVersion string, plugins func(dataDir string) string) *node {
	t.Helper()
	requireRoot(t)
	n := &node{t: t, name: suite.NewName(), dir: t.TempDir()}
	n.dataDir = filepath.Join(n.dir, "ipam")
	var err error
	if n.ns, err = netns.Create(n.name + "-node"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(n.name + "-node"); err != nil {
			t.Error(err)
		}
	})
	conflist := fmt.Sprintf(`{"cniVersion": %q, "name": "fntest", "plugins": [%s]}`, cniVersion, plugins(n.dataDir))
	if n.rt, err = cniruntime.New(n.ns, []string{suite.PluginDir}, filepath.Join(n.dir, "cache"), []byte(conflist)); err != nil {
		t.Fatal(err)
	}
	return n
}

// pod makes a pod namespace, removed when the test ends.
func (n *node) pod(name string) cniruntime.Pod {
	n.t.Helper()
	path, err := netns.Create(n.name + "-" + name)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() {
		if err := netns.Delete(n.name + "-" + name); err != nil {
			n.t.Error(err)
		}
	})
	return cniruntime.Pod{ID: "ctr-" + name, NetNS: path, Namespace: "default", Name: name, UID: "uid-" + name}
}

func (n *node) add(p cniruntime.Pod) *current.Result {
	n.t.Helper()
	res, err := n.rt.Add(context.Background(), p)
	if err != nil {
		n.t.Fatalf("ADD %s: %v", p.Name, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		n.t.Fatal(err)
	}
	return r
}

func (n *node) del(p cniruntime.Pod) {
	n.t.Helper()
	if err := n.rt.Del(context.Background(), p); err != nil {
		n.t.Fatalf("DEL %s: %v", p.Name, err)
	}
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
func (n *node) start(cmd *exec.Cmd) error {
	return netns.Do(n.ns, cmd.Start)
}

// execPlugin runs flatnet-cni by hand inside the node and returns its stdout
// and whether it failed.
func (n *node) execPlugin(t *testing.T, env map[string]string, stdin string, wrap ...string) ([]byte, error) {
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

// handle is a netlink handle on the node's namespace.
func (n *node) handle() *netlink.Handle {
	n.t.Helper()
	return handleAt(n.t, n.ns)
}

func handleAt(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	h, err := netns.Handle(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// pluginVeths lists the host veths of the plugin in the node.
func (n *node) pluginVeths() []string {
	n.t.Helper()
	links, err := n.handle().LinkList()
	if err != nil {
		n.t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if _, _, _, ok := podnet.ParseAlias(l.Attrs().Alias); ok {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// records lists the IPAM store's claims as "address owner".
func (n *node) records() []string {
	n.t.Helper()
	a, err := ipam.New(ipam.Config{Network: "fntest", DataDir: n.dataDir})
	if err != nil {
		n.t.Fatal(err)
	}
	defer a.Close()
	st, err := a.Snapshot()
	if err != nil {
		n.t.Fatal(err)
	}
	var out []string
	for addr, c := range st.Claims {
		out = append(out, addr.String()+" "+c.Owner.String())
	}
	return out
}

// assertClean fails when a veth or IPAM record of the plugin remains.
func (n *node) assertClean() {
	n.t.Helper()
	if v := n.pluginVeths(); len(v) > 0 {
		n.t.Errorf("host veths left behind: %v", v)
	}
	if r := n.records(); len(r) > 0 {
		n.t.Errorf("IPAM records left behind: %v", r)
	}
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
