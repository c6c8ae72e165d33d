package cni

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/flatnet-io/flatnet/internal/ipam"
	"github.com/flatnet-io/flatnet/internal/podnet"
)

// DefaultDataDir is where the IPAM store lives unless ipam.dataDir says otherwise.
const DefaultDataDir = "/var/lib/cni/flatnet"

// NetConf is the plugin's JSON configuration (one entry of a conflist).
type NetConf struct {
	types.PluginConf
	Bridge        string        `json:"bridge,omitempty"`
	MTU           int           `json:"mtu,omitempty"`
	HairpinMode   *bool         `json:"hairpinMode,omitempty"`
	IPAM          IPAMConf      `json:"ipam"`
	Policy        *PolicyConf   `json:"policy,omitempty"`
	RuntimeConfig RuntimeConfig `json:"runtimeConfig,omitempty"`
}

// IPAMConf is the built-in IPAM's section, in host-local's conventional form.
type IPAMConf struct {
	Type     string        `json:"type,omitempty"`
	Ranges   [][]RangeConf `json:"ranges"`
	Routes   []RouteConf   `json:"routes,omitempty"`
	Reserved []string      `json:"reserved,omitempty"`
	DataDir  string        `json:"dataDir,omitempty"`
}

// RangeConf is one range of a range set.
type RangeConf struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart,omitempty"`
	RangeEnd   string `json:"rangeEnd,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
}

// RouteConf is a route to install in the pod; gw defaults to the gateway of
// the range of the same family.
type RouteConf struct {
	Dst string `json:"dst"`
	GW  string `json:"gw,omitempty"`
}

// RuntimeConfig carries the capabilities the plugin supports: "ips" (static
// addresses) and "mac".
type RuntimeConfig struct {
	IPs []string `json:"ips,omitempty"`
	MAC string   `json:"mac,omitempty"`
}

// Config is a parsed and validated NetConf.
type Config struct {
	Conf         NetConf
	Bridge       string
	MTU          int // 0: the node's uplink MTU
	Hairpin      bool
	IPAM         ipam.Config
	Routes       []RouteConf // validated; empty means a default route per family
	RequestedIPs []netip.Addr
	MAC          net.HardwareAddr
	Admission    *Admission // nil: no NetworkPolicy admission
}

// HasFamily reports whether any range set is of the given family.
func (c *Config) HasFamily(v6 bool) bool {
	for _, s := range c.IPAM.Sets {
		if s[0].Subnet.Addr().Is6() == v6 {
			return true
		}
	}
	return false
}

// ParseConfig decodes and validates stdin. Errors carry the CNI codes:
// 6 for undecodable JSON, 2 for an unsupported field, 7 for invalid values.
func ParseConfig(stdin []byte) (*Config, error) {
	var nc NetConf
	if err := json.Unmarshal(stdin, &nc); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decode network configuration", err.Error())
	}
	if e := utils.ValidateNetworkName(nc.Name); e != nil {
		return nil, e
	}
	if nc.IPAM.Type != "" && nc.IPAM.Type != "flatnet" && nc.IPAM.Type != "host-local" {
		return nil, types.NewError(types.ErrUnsupportedField, fmt.Sprintf("unsupported field ipam.type=%q: flatnet-cni has its own IPAM; leave it out", nc.IPAM.Type), "")
	}
	if err := version.ParsePrevResult(&nc.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decode prevResult", err.Error())
	}
	c := &Config{Conf: nc, Bridge: nc.Bridge, MTU: nc.MTU, Hairpin: true}
	if c.Bridge == "" {
		c.Bridge = podnet.DefaultBridge
	}
	if nc.HairpinMode != nil {
		c.Hairpin = *nc.HairpinMode
	}
	if err := c.validate(); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration", err.Error())
	}
	return c, nil
}

func (c *Config) validate() error {
	nc := &c.Conf
	if e := utils.ValidateInterfaceName(c.Bridge); e != nil {
		return fmt.Errorf("bridge %q: %s", c.Bridge, e.Msg)
	}
	if c.MTU < 0 || c.MTU > 65535 || c.MTU > 0 && c.MTU < 576 {
		return fmt.Errorf("mtu %d is outside 576..65535", c.MTU)
	}
	if err := c.validateIPAM(); err != nil {
		return err
	}
	for _, r := range nc.IPAM.Routes {
		if err := c.validateRoute(r); err != nil {
			return err
		}
	}
	c.Routes = nc.IPAM.Routes
	if err := c.validatePolicy(); err != nil {
		return err
	}
	for _, s := range nc.RuntimeConfig.IPs {
		p, err := netip.ParsePrefix(s)
		a := p.Addr()
		if err != nil {
			if a, err = netip.ParseAddr(s); err != nil {
				return fmt.Errorf("runtimeConfig.ips: %q is not an IP address", s)
			}
		}
		c.RequestedIPs = append(c.RequestedIPs, a)
	}
	if nc.RuntimeConfig.MAC != "" {
		mac, err := net.ParseMAC(nc.RuntimeConfig.MAC)
		if err != nil || len(mac) != 6 || mac[0]&1 == 1 {
			return fmt.Errorf("runtimeConfig.mac: %q is not a unicast Ethernet address", nc.RuntimeConfig.MAC)
		}
		c.MAC = mac
	}
	return nil
}

// validateIPAM turns the ipam section into the allocator's configuration.
func (c *Config) validateIPAM() error {
	nc := &c.Conf
	c.IPAM = ipam.Config{Network: nc.Name, DataDir: nc.IPAM.DataDir}
	if c.IPAM.DataDir == "" {
		c.IPAM.DataDir = DefaultDataDir
	}
	if len(nc.IPAM.Ranges) == 0 {
		return fmt.Errorf("ipam.ranges is empty: at least one range set is required")
	}
	for i, set := range nc.IPAM.Ranges {
		var rs ipam.RangeSet
		for j, rc := range set {
			r, err := parseRange(rc)
			if err != nil {
				return fmt.Errorf("ipam.ranges[%d][%d]: %w", i, j, err)
			}
			rs = append(rs, r)
		}
		c.IPAM.Sets = append(c.IPAM.Sets, rs)
	}
	if err := ipam.Canonicalize(c.IPAM.Sets); err != nil {
		return fmt.Errorf("ipam.ranges: %w", err)
	}
	for _, s := range nc.IPAM.Reserved {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("ipam.reserved: %q is not an IP address", s)
		}
		c.IPAM.Reserved = append(c.IPAM.Reserved, a)
	}
	return nil
}

func parseRange(rc RangeConf) (ipam.Range, error) {
	var r ipam.Range
	var err error
	if r.Subnet, err = netip.ParsePrefix(rc.Subnet); err != nil {
		return r, fmt.Errorf("subnet %q is not a valid CIDR", rc.Subnet)
	}
	for _, f := range []struct {
		name string
		in   string
		out  *netip.Addr
	}{{"rangeStart", rc.RangeStart, &r.Start}, {"rangeEnd", rc.RangeEnd, &r.End}, {"gateway", rc.Gateway, &r.Gateway}} {
		if f.in == "" {
			continue
		}
		if *f.out, err = netip.ParseAddr(f.in); err != nil {
			return r, fmt.Errorf("%s %q is not an IP address", f.name, f.in)
		}
	}
	return r, nil
}

func (c *Config) validateRoute(r RouteConf) error {
	dst, err := netip.ParsePrefix(r.Dst)
	if err != nil {
		return fmt.Errorf("ipam.routes: dst %q is not a valid CIDR", r.Dst)
	}
	if !c.HasFamily(dst.Addr().Is6()) {
		return fmt.Errorf("ipam.routes: no range of the family of %s", r.Dst)
	}
	if r.GW != "" {
		gw, err := netip.ParseAddr(r.GW)
		if err != nil || gw.Is6() != dst.Addr().Is6() {
			return fmt.Errorf("ipam.routes: gw %q is not an address of the family of %s", r.GW, r.Dst)
		}
	}
	return nil
}

// podRoutes are the routes for a pod holding allocs: the configured ones
// (gateway filled in per family), or a default route per family.
func (c *Config) podRoutes(allocs []ipam.Allocation) []podnet.Route {
	gw := func(v6 bool) netip.Addr {
		for _, a := range allocs {
			if a.Addr.Is6() == v6 {
				return a.Gateway
			}
		}
		return netip.Addr{}
	}
	var out []podnet.Route
	if len(c.Routes) == 0 {
		for _, a := range allocs {
			out = append(out, podnet.Route{Dst: netip.PrefixFrom(unspecified(a.Addr.Is6()), 0), Via: a.Gateway})
		}
		return out
	}
	for _, r := range c.Routes {
		dst := netip.MustParsePrefix(r.Dst).Masked()
		via := gw(dst.Addr().Is6())
		if r.GW != "" {
			via = netip.MustParseAddr(r.GW)
		}
		out = append(out, podnet.Route{Dst: dst, Via: via})
	}
	return out
}

func unspecified(v6 bool) netip.Addr {
	if v6 {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}
