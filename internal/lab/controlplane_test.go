package lab

import (
	"strings"
	"testing"
)

// TestKubeletsSeeOnlyTheirPods: each node's kubelet lists pod namespaces by
// its --netns-prefix and removes those it does not run, so no node's prefix
// may start the name of another node's pod namespace (node-1 and node-10
// included).
func TestKubeletsSeeOnlyTheirPods(t *testing.T) {
	l, err := NewLayout(DefaultStateRoot, "lab", 10)
	if err != nil {
		t.Fatal(err)
	}
	prefix := func(i int) string {
		for _, a := range nodeComponents(l, "bin", i, true)[1].argv {
			if v, ok := strings.CutPrefix(a, "--netns-prefix="); ok {
				return v
			}
		}
		t.Fatalf("node-%d's kubelet has no --netns-prefix", i)
		return ""
	}
	for i := 1; i <= l.Nodes; i++ {
		for j := 1; j <= l.Nodes; j++ {
			if i != j && strings.HasPrefix(prefix(j)+"0f6b5a3e-7c1d-4e2f-9a8b-1c2d3e4f5a6b", prefix(i)) {
				t.Errorf("node-%d's kubelet (prefix %q) sees node-%d's pods (prefix %q)", i, prefix(i), j, prefix(j))
			}
		}
	}
}
