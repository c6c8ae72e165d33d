package kubelet

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// TestCleanupOrphansTakesOnlyPodSandboxes: at start the kubelet removes the
// sandboxes of pods that are gone, but only names of the form
// <prefix><pod UID>; another lab whose name extends this one's prefix
// ("fn-x-node-1-p-" is the start of lab "x-node-1-p"'s namespaces) keeps
// its own.
func TestCleanupOrphansTakesOnlyPodSandboxes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	prefix := fmt.Sprintf("fn-ut%d-node-1-p-", os.Getpid())
	live := "0f6b5a3e-7c1d-4e2f-9a8b-1c2d3e4f5a6b"
	orphan := "1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d"
	foreign := prefix + "switch"
	for _, n := range []string{prefix + live, prefix + orphan, foreign} {
		if _, err := netns.Create(n); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = netns.Delete(n) })
	}
	k := &Kubelet{cfg: Config{NetnsPrefix: prefix}, log: slog.New(slog.DiscardHandler),
		net: &network{confDir: t.TempDir()}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: "0f6b5a3e-7c1d-4e2f-9a8b-1c2d3e4f5a6b"}}
	k.cleanupOrphans(context.Background(), []any{pod})
	left, _ := netns.List(prefix)
	if want := []string{prefix + live, foreign}; !slices.Equal(left, want) {
		t.Errorf("namespaces left: %v, want %v", left, want)
	}
}
