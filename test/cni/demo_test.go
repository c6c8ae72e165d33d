package cni_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/flatnet-io/flatnet/internal/demo"
	"github.com/flatnet-io/flatnet/internal/netns"
)

// `flatnet demo` end to end: three pods ping each other and the gateway, and
// nothing of it remains afterwards.
func TestDemo(t *testing.T) {
	requireRoot(t)
	var out bytes.Buffer
	if err := demo.Run(context.Background(), demo.Options{PluginDir: suite.PluginDir, Pods: 3, Subnet: "10.99.0.0/24", Out: &out}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	if got := strings.Count(out.String(), "ping pod-"); got != 9 {
		t.Fatalf("%d pings reported, want 9 (3 pods x 2 peers + gateway)\n%s", got, out.String())
	}
	if left, _ := netns.List("fn-demo-"); len(left) > 0 {
		t.Fatalf("demo left namespaces: %v", left)
	}
}
