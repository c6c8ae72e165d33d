package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// writeFile replaces path with data atomically: a temporary file in the
// same directory, fsync, rename, fsync of the directory. A reader, or a
// `lab up` killed at any point, sees the old content or the new, never a
// part.
func writeFile(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// lockFile is the file `lab up` and `lab down` hold a lock on.
const lockFile = "lock"

// lock takes the lab's lock, so that two commands never start or stop its
// processes at the same time; it fails at once when another holds it. The
// kernel drops the lock when the process dies, however it dies, and the
// descriptor is close-on-exec, so the processes a command starts do not
// inherit it.
func lock(l Layout) (unlock func(), err error) {
	if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(l.Path(lockFile), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another flatnet command is working on lab %q (it holds %s)", l.Name, f.Name())
		}
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// saved is what a lab remembers about itself between commands.
type saved struct {
	Nodes   int    `json:"nodes"`
	BinDir  string `json:"binDir"`
	APIPort int    `json:"apiPort"`
}

// stateFile, in the state directory, holds what a lab remembers (saved).
// `lab up` writes it first thing, so a directory that has it is a lab's.
const stateFile = "lab.json"

func load(l Layout) (saved, error) {
	var s saved
	b, err := os.ReadFile(l.Path(stateFile))
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(b, &s)
}

func save(l Layout, s saved) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(l.Path(stateFile), b, 0o644)
}

// Open returns the layout of an existing lab.
func Open(stateRoot, name string) (Layout, error) {
	l, _, err := open(stateRoot, name)
	return l, err
}

// open returns the layout of an existing lab and what it saved.
func open(stateRoot, name string) (Layout, saved, error) {
	l, err := NewLayout(stateRoot, name, 0)
	if err != nil {
		return l, saved{}, err
	}
	s, err := load(l)
	if err != nil {
		return l, s, fmt.Errorf("lab %q is not up (no %s): %w", name, l.Path(stateFile), err)
	}
	l.Nodes = s.Nodes
	return l, s, nil
}

// record writes lab.json for o, first thing in the state directory; a lab
// that is up keeps its number of nodes.
func record(l Layout, o Options) (saved, error) {
	s, err := load(l)
	if err == nil && s.Nodes != o.Nodes {
		return s, fmt.Errorf("lab %q is up with %d nodes; `flatnet lab down --name %s` first to change that", o.Name, s.Nodes, o.Name)
	}
	s.Nodes, s.BinDir = o.Nodes, o.BinDir
	return s, save(l, s)
}

// removeState removes the state directory, but only one that a lab made:
// it holds lab.json (written first thing by `lab up`, right after taking
// the lock), or nothing but the lock file.
// Anything else at that path is left alone with an error.
func removeState(l Layout) error {
	entries, err := os.ReadDir(l.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	onlyLock := len(entries) == 0 || len(entries) == 1 && entries[0].Name() == lockFile
	if _, err := os.Lstat(l.Path(stateFile)); err != nil && !onlyLock {
		return fmt.Errorf("%s has no lab.json: not a lab's state directory, left alone", l.Dir)
	}
	return os.RemoveAll(l.Dir)
}
