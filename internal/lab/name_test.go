package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"lab", true},
		{"hl", true},
		{"a", true},
		{"0", true},
		{"a-b-1", true},
		{strings.Repeat("a", MaxNameLen), true},
		{strings.Repeat("a", MaxNameLen+1), false},
		{"", false},
		{".", false},
		{"..", false},
		{"../..", false},
		{"a/b", false},
		{"Lab", false},
		{"-a", false},
		{"a-", false},
		{"a_b", false},
		{"a.b", false},
		{"a b", false},
		{"a\x00", false},
	} {
		err := ValidateName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// TestNamesFitTheKernel checks the reasoning behind MaxNameLen: the longest
// namespace name of the longest lab name is a valid file name, and the
// switch port names (the only interface names the lab chooses) do not
// depend on the lab's name and fit IFNAMSIZ.
func TestNamesFitTheKernel(t *testing.T) {
	l, err := NewLayout(DefaultStateRoot, strings.Repeat("a", MaxNameLen), MaxNodes)
	if err != nil {
		t.Fatal(err)
	}
	if n := l.PodNS(l.NodeName(MaxNodes), "0f6b5a3e-7c1d-4e2f-9a8b-1c2d3e4f5a6b"); len(n) > 255 {
		t.Errorf("pod namespace name %q is %d bytes", n, len(n))
	}
	for _, h := range hosts(l) {
		if len(h.role) > 15 {
			t.Errorf("switch port %q is longer than IFNAMSIZ-1", h.role)
		}
	}
}

func TestUnder(t *testing.T) {
	root := "/var/lib/flatnet/labs"
	for _, tc := range []struct {
		elems []string
		want  string // "" = refused
	}{
		{[]string{"lab"}, root + "/lab"},
		{[]string{"lab", "pids", "etcd"}, root + "/lab/pids/etcd"},
		{nil, ""},
		{[]string{""}, ""},
		{[]string{"."}, ""},
		{[]string{".."}, ""},
		{[]string{"lab", ".."}, ""},
		{[]string{"a/../.."}, ""},
		{[]string{"/etc"}, ""},
		{[]string{"lab", "x\x00"}, ""},
	} {
		got, err := under(root, tc.elems...)
		if tc.want == "" {
			if err == nil {
				t.Errorf("under(%q) = %q, want an error", tc.elems, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("under(%q) = %q, %v, want %q", tc.elems, got, err, tc.want)
		}
	}
}

func TestNewLayoutRefuses(t *testing.T) {
	for _, tc := range []struct{ root, name string }{
		{"", "lab"},
		{"labs", "lab"},
		{"/", "lab"},
		{"/var/lib/flatnet/labs", ".."},
		{"/var/lib/flatnet/labs", ""},
	} {
		if l, err := NewLayout(tc.root, tc.name, 1); err == nil {
			t.Errorf("NewLayout(%q, %q) = %+v, want an error", tc.root, tc.name, l)
		}
	}
}

// TestRemoveStateKeepsForeignDirectories: `lab down` removes a directory
// only when a lab made it.
func TestRemoveStateKeepsForeignDirectories(t *testing.T) {
	root := t.TempDir()
	l, err := NewLayout(root, "lab", 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.removeState(); err != nil {
		t.Fatalf("missing directory: %v", err)
	}
	if err := os.MkdirAll(l.Path("data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.removeState(); err == nil {
		t.Fatal("removed a directory without lab.json")
	}
	if err := os.WriteFile(l.Path("lab.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.removeState(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.Dir); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", l.Dir, err)
	}
	if _, err := os.Stat(filepath.Dir(l.Dir)); err != nil {
		t.Fatalf("state root gone: %v", err)
	}
}

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
