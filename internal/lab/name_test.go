package lab

import (
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
