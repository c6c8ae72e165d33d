package cni

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name  string
		json  string
		code  uint   // 0: valid
		msg   string // part of the error text
		check func(t *testing.T, c *Config)
	}{
		{
			name: "issue example, host-local form",
			json: `{"cniVersion":"1.1.0","name":"n","type": "flatnet-cni", "bridge": "fn0", "ipam": {"ranges": [[{"subnet": "10.99.0.0/24"}]]}}`,
			check: func(t *testing.T, c *Config) {
				if c.Bridge != "fn0" || !c.Hairpin || c.MTU != 0 || c.IPAM.DataDir != DefaultDataDir {
					t.Fatalf("defaults: %+v", c)
				}
				r := c.IPAM.Sets[0][0]
				if r.Gateway.String() != "10.99.0.1" || r.Start.String() != "10.99.0.1" || r.End.String() != "10.99.0.254" {
					t.Fatalf("range defaults: %+v", r)
				}
			},
		},
		{
			name: "every field",
			json: `{"cniVersion":"1.1.0","name":"n","type":"flatnet-cni","bridge":"br9","mtu":1400,"hairpinMode":false,
			  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.10","rangeEnd":"10.0.0.20","gateway":"10.0.0.254"}],[{"subnet":"fd00::/64"}]],
			  "routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.0.0.254"}],"reserved":["10.0.0.15"],"dataDir":"/tmp/x"},
			  "runtimeConfig":{"ips":["10.0.0.12/24"],"mac":"02:00:00:00:00:01"}}`,
			check: func(t *testing.T, c *Config) {
				if c.Bridge != "br9" || c.Hairpin || c.MTU != 1400 || c.IPAM.DataDir != "/tmp/x" || len(c.IPAM.Sets) != 2 {
					t.Fatalf("parsed: %+v", c)
				}
				if c.RequestedIPs[0].String() != "10.0.0.12" || c.MAC.String() != "02:00:00:00:00:01" || c.IPAM.Reserved[0].String() != "10.0.0.15" {
					t.Fatalf("runtime config: %+v", c)
				}
			},
		},
		{
			name: "policy admission, defaults",
			json: `{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]},"policy":{}}`,
			check: func(t *testing.T, c *Config) {
				if a := c.Admission; a == nil || a.Socket != "@flatnet-policy" || a.Timeout != DefaultAdmissionTimeout || a.FailOpen {
					t.Fatalf("admission: %+v", a)
				}
			},
		},
		{
			name: "policy admission, every field",
			json: `{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]},"policy":{"socket":"/run/flatnet/policy.sock","timeout":"2500ms","failOpen":true}}`,
			check: func(t *testing.T, c *Config) {
				if a := c.Admission; a == nil || a.Socket != "/run/flatnet/policy.sock" || a.Timeout.Milliseconds() != 2500 || !a.FailOpen {
					t.Fatalf("admission: %+v", a)
				}
			},
		},
		{
			name: "no policy section: no admission",
			json: `{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]}}`,
			check: func(t *testing.T, c *Config) {
				if c.Admission != nil {
					t.Fatalf("admission: %+v", c.Admission)
				}
			},
		},
		{name: "bad policy timeout", json: `{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]},"policy":{"timeout":"soon"}}`, code: types.ErrInvalidNetworkConfig, msg: "policy.timeout"},
		{name: "malformed JSON", json: `{"name": "n", `, code: types.ErrDecodingFailure},
		{name: "bad CIDR", json: `{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/33"}]]}}`, code: types.ErrInvalidNetworkConfig, msg: "not a valid CIDR"},
		{name: "gateway outside subnet", json: `{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24","gateway":"10.0.1.1"}]]}}`, code: types.ErrInvalidNetworkConfig, msg: "outside subnet"},
		{name: "no ranges", json: `{"name":"n","ipam":{}}`, code: types.ErrInvalidNetworkConfig, msg: "ranges is empty"},
		{name: "overlapping ranges", json: `{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.0/16"}]]}}`, code: types.ErrInvalidNetworkConfig, msg: "overlaps"},
		{name: "missing name", json: `{"ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]}}`, code: types.ErrInvalidNetworkConfig},
		{name: "bridge name too long", json: `{"name":"n","bridge":"a-very-long-bridge-name","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]}}`, code: types.ErrInvalidNetworkConfig, msg: "bridge"},
		{name: "mtu too small", json: `{"name":"n","mtu":100,"ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]}}`, code: types.ErrInvalidNetworkConfig, msg: "mtu"},
		{name: "foreign ipam type", json: `{"name":"n","ipam":{"type":"dhcp","ranges":[[{"subnet":"10.0.0.0/24"}]]}}`, code: types.ErrUnsupportedField, msg: "ipam.type"},
		{name: "route of a missing family", json: `{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]],"routes":[{"dst":"::/0"}]}}`, code: types.ErrInvalidNetworkConfig, msg: "family"},
		{name: "bad reserved", json: `{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]],"reserved":["x"]}}`, code: types.ErrInvalidNetworkConfig, msg: "reserved"},
		{name: "multicast mac", json: `{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]},"runtimeConfig":{"mac":"01:00:5e:00:00:01"}}`, code: types.ErrInvalidNetworkConfig, msg: "mac"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.json))
			if tc.code == 0 {
				if err != nil {
					t.Fatal(err)
				}
				tc.check(t, c)
				return
			}
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("got %v, want a CNI error with code %d", err, tc.code)
			}
			if e.Code != tc.code || !strings.Contains(e.Msg+" "+e.Details, tc.msg) {
				t.Fatalf("got code %d %q (%s), want code %d containing %q", e.Code, e.Msg, e.Details, tc.code, tc.msg)
			}
		})
	}
}

func TestPodRoutes(t *testing.T) {
	c, err := ParseConfig([]byte(`{"name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]],"routes":[{"dst":"10.96.0.0/12"},{"dst":"0.0.0.0/0","gw":"10.0.0.9"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	got := c.podRoutes(nil)
	if len(got) != 2 || got[0].Dst.String() != "10.96.0.0/12" || got[1].Via.String() != "10.0.0.9" {
		t.Fatalf("routes = %+v", got)
	}
}

func TestK8sArgs(t *testing.T) {
	got := k8sArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_UID=u-1;OTHER=y")
	if len(got) != 3 || got["K8S_POD_NAMESPACE"] != "x" || got["K8S_POD_NAME"] != "a" || got["K8S_POD_UID"] != "u-1" {
		t.Errorf("got %v", got)
	}
}
