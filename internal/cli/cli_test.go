package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flatnet-io/flatnet/internal/lab"
)

// TestLabRefusesBadName runs every lab subcommand with names that would
// escape or stand for the state root, and a state root that is not an
// absolute path, and checks that each is refused as a usage error before
// anything happens: the files around the state root are all still there.
func TestLabRefusesBadName(t *testing.T) {
	tmp := t.TempDir()
	t.Chdir(tmp)
	root := filepath.Join(tmp, "labs")
	sentinels := []string{
		filepath.Join(tmp, "sentinel"),
		filepath.Join(root, "other", "lab.json"),
		filepath.Join(tmp, "lab", "sentinel"), // what --state-root "" would name
	}
	for _, s := range sentinels {
		if err := os.MkdirAll(filepath.Dir(s), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(s, []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bad := []struct{ name, root string }{
		{"..", root},
		{"../..", root},
		{"", root},
		{".", root},
		{"a/b", root},
		{"Lab", root},
		{"-x", root},
		{"x-", root},
		{"a_b", root},
		{strings.Repeat("a", lab.MaxNameLen+1), root},
		{"lab", ""},
		{"lab", "labs"},
	}
	for _, cmd := range []string{"up", "down", "status", "kubeconfig", "traffic", "exec"} {
		for _, b := range bad {
			args := []string{"lab", cmd, "--name", b.name, "--state-root", b.root}
			if cmd == "exec" {
				args = append(args, "--node", "node-1", "--", "true")
			}
			if code := Run(args); code != 2 {
				t.Errorf("flatnet %s: exit code %d, want 2 (usage error)", strings.Join(args, " "), code)
			}
			for _, s := range sentinels {
				if _, err := os.Stat(s); err != nil {
					t.Fatalf("flatnet %s removed %s: %v", strings.Join(args, " "), s, err)
				}
			}
		}
	}
}
