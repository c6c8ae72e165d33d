package lab

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileReplacesWhole(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lab.json")
	for _, content := range []string{"first, longer content", "second"} {
		if err := writeFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil || string(b) != content {
			t.Fatalf("read %q, %v; want %q", b, err, content)
		}
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %v, want lab.json alone", entries)
	}
}

// TestLockExcludes: a second command on the same lab is refused while the
// first holds the lock, and admitted once it is gone.
func TestLockExcludes(t *testing.T) {
	l := newTestLayout(t, testLabName(""), 1)
	unlock, err := lock(l)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock(l); err == nil {
		t.Fatal("a second lock was granted while the first is held")
	}
	unlock()
	unlock2, err := lock(l)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}

// TestRemoveStateKeepsForeignDirectories: `lab down` removes a directory
// only when a lab made it.
func TestRemoveStateKeepsForeignDirectories(t *testing.T) {
	root := t.TempDir()
	l, err := NewLayout(root, "lab", 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := removeState(l); err != nil {
		t.Fatalf("missing directory: %v", err)
	}
	if err := os.MkdirAll(l.Path("data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := removeState(l); err == nil {
		t.Fatal("removed a directory without lab.json")
	}
	if err := os.WriteFile(l.Path("lab.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := removeState(l); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.Dir); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", l.Dir, err)
	}
	if _, err := os.Stat(filepath.Dir(l.Dir)); err != nil {
		t.Fatalf("state root gone: %v", err)
	}
}
