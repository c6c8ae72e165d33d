package proxy_test

import (
	"os/exec"
	"strings"
	"testing"
)

// A proxier that starts on a node whose table an earlier one programmed
// (flatnetd restarted) takes the table over in its first sync: the Services
// as they are now are served, and nothing is left of the old state (no
// shared chain or endpoint map of an endpoint count no Service has any
// more). A later partial sync that needs a new endpoint count builds on the
// table the first sync left.
func TestRestartTakesOverTheTable(t *testing.T) {
	e := newEnv(t, "")
	a, b, c, client := e.addPod("a"), e.addPod("b"), e.addPod("c"), e.addPod("client")
	e.proxier.UpdateService(svc("three", "10.96.0.60", nodePort(30600, 30601)))
	e.proxier.UpdateSlice(slice("three", readyOn(a, "node-1"), readyOn(b, "node-2"), readyOn(c, "node-3")))
	e.serve(svc("one", "10.96.0.61"), readyOn(a, "node-1"))
	if seen := spread(t, client.ns, "10.96.0.60:80", 45); len(seen) != 3 {
		t.Fatalf("before the restart the Service of three pods reached %v", seen)
	}

	e.stopProxiers()
	e.startProxiers()
	// While no proxier ran: "three" lost c, "one" was deleted, "two" came.
	e.proxier.UpdateService(svc("three", "10.96.0.60", nodePort(30600, 30601)))
	e.proxier.UpdateSlice(slice("three", readyOn(a, "node-1"), readyOn(b, "node-2")))
	e.serve(svc("two", "10.96.0.62"), readyOn(b, "node-2"), readyOn(c, "node-3"))
	for _, check := range []struct {
		from, addr string
		want       []string
	}{
		{client.ns, "10.96.0.60:80", []string{"a", "b"}},
		{e.outside, hostPort(nodeUplinkIP, 30600), []string{"a", "b"}},
		{client.ns, "10.96.0.62:80", []string{"b", "c"}},
	} {
		seen := spread(t, check.from, check.addr, 30)
		if len(seen) != len(check.want) || seen[check.want[0]] == 0 || seen[check.want[1]] == 0 {
			t.Errorf("after the restart %s reached %v, want %v", check.addr, seen, check.want)
		}
	}
	table := e.table()
	for _, gone := range []string{"lb-3", "slot-2", "endpoints-2", "nodeport-endpoints-2", "10.96.0.61"} {
		if strings.Contains(table, gone) {
			t.Errorf("after the restart the table still has %q:\n%s", gone, table)
		}
	}

	e.proxier.UpdateSlice(slice("two", readyOn(a, "node-1"), readyOn(b, "node-2"), readyOn(c, "node-3")))
	e.sync()
	if seen := spread(t, client.ns, "10.96.0.62:80", 45); len(seen) != 3 {
		t.Errorf("after scaling to three pods the Service reached %v", seen)
	}
}

// table lists the node's IPv4 proxy table.
func (e *env) table() string {
	e.t.Helper()
	out, err := exec.Command("nsenter", "--net="+e.node, "nft", "list", "table", "ip", "flatnet-proxy").CombinedOutput()
	if err != nil {
		e.t.Fatalf("nft list table: %v: %s", err, out)
	}
	return string(out)
}
