// Package cniconf renders the node's CNI network configuration list for
// flatnet-cni from the node's pod CIDRs, and installs it the way a runtime
// can safely read it: written to a temporary file in the same directory and
// renamed over the old one, so containerd or CRI-O never read half a file.
package cniconf

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// Options describe the network of one node.
type Options struct {
	Network  string         // conflist name; default "flatnet"
	Bridge   string         // default flatnet0 (plugin default)
	MTU      int            // 0: the node's uplink MTU (plugin default)
	PodCIDRs []netip.Prefix // one range set per CIDR (dual-stack: one per family)
	DataDir  string         // IPAM store; "" = plugin default
	Portmap  bool           // chain the reference portmap plugin for hostPorts
	// PolicySocket, when set, makes the plugin ask flatnetd there to admit
	// each pod into the NetworkPolicy tables before its ADD returns (fail
	// closed).
	PolicySocket string
}

type rangeConf struct {
	Subnet string `json:"subnet"`
}

type ipamConf struct {
	Ranges  [][]rangeConf `json:"ranges"`
	DataDir string        `json:"dataDir,omitempty"`
}

type pluginConf struct {
	Type         string          `json:"type"`
	Bridge       string          `json:"bridge,omitempty"`
	MTU          int             `json:"mtu,omitempty"`
	IPAM         *ipamConf       `json:"ipam,omitempty"`
	Capabilities map[string]bool `json:"capabilities,omitempty"`
	Policy       *policyConf     `json:"policy,omitempty"`
}

type policyConf struct {
	Socket string `json:"socket"`
}

// Render returns the conflist JSON for o.
func Render(o Options) ([]byte, error) {
	if len(o.PodCIDRs) == 0 {
		return nil, errors.New("no pod CIDR: the node has none assigned yet")
	}
	if o.Network == "" {
		o.Network = "flatnet"
	}
	ip := &ipamConf{DataDir: o.DataDir}
	for _, c := range o.PodCIDRs {
		if !c.IsValid() {
			return nil, fmt.Errorf("invalid pod CIDR %s", c)
		}
		ip.Ranges = append(ip.Ranges, []rangeConf{{Subnet: c.Masked().String()}})
	}
	plugins := []pluginConf{{Type: "flatnet-cni", Bridge: o.Bridge, MTU: o.MTU, IPAM: ip}}
	if o.PolicySocket != "" {
		plugins[0].Policy = &policyConf{Socket: o.PolicySocket}
	}
	if o.Portmap {
		plugins = append(plugins, pluginConf{Type: "portmap", Capabilities: map[string]bool{"portMappings": true}})
	}
	return json.MarshalIndent(struct {
		CNIVersion string       `json:"cniVersion"`
		Name       string       `json:"name"`
		Plugins    []pluginConf `json:"plugins"`
	}{"1.1.0", o.Network, plugins}, "", "  ")
}

// Install writes data to dir/name atomically (temporary file, fsync,
// rename). It reports whether the file changed; an identical file is left
// alone so the runtime sees no spurious update.
func Install(dir, name string, data []byte) (bool, error) {
	path := filepath.Join(dir, name)
	if old, err := os.ReadFile(path); err == nil && string(old) == string(data) {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-")
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, fmt.Errorf("sync %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return false, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, fmt.Errorf("install %s: %w", path, err)
	}
	return true, nil
}
