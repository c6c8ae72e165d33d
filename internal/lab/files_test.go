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
	unlock, err := l.lock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.lock(); err == nil {
		t.Fatal("a second lock was granted while the first is held")
	}
	unlock()
	unlock2, err := l.lock()
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}
