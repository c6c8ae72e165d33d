package kubelet

import "testing"

func TestValidNodeIPs(t *testing.T) {
	for _, c := range []struct {
		ips []string
		ok  bool
	}{
		{[]string{"172.30.0.11"}, true},
		{[]string{"172.30.0.11", "fd00:30::11"}, true},
		{[]string{"fd00:30::11", "172.30.0.11"}, true}, // IPv6 primary
		{nil, false},
		{[]string{"172.30.0.11", "172.30.0.12"}, false},
		{[]string{"fd00:30::11", "fd00:30::12"}, false},
		{[]string{"172.30.0.11", "fd00:30::11", "10.0.0.1"}, false},
		{[]string{"node-1"}, false},
	} {
		if err := validNodeIPs(c.ips); (err == nil) != c.ok {
			t.Errorf("validNodeIPs(%q) = %v, want ok=%v", c.ips, err, c.ok)
		}
	}
}
