package ipam

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Store keeps a State on disk in two slots, state.0 and state.1. Generation
// g is written to slot (g-1) mod 2 in three fsynced steps: an intent header,
// the body, a commit header. See the package doc for why a load can always
// tell a torn write from damage.
type Store struct {
	dir    string
	log    *slog.Logger
	sync   func(*os.File) error // fsync; tests record the calls
	lock   *os.File
	slots  [2]*os.File
	loaded bool   // Load succeeded and no Save failed since
	gen    uint64 // the newest committed generation, as of the last Load or Save
}

// ErrCorrupt is matched (errors.Is) by every *CorruptError.
var ErrCorrupt = errors.New("IPAM store corrupt")

// CorruptError says that a state file holds what no crash can leave: the
// store refuses to work rather than risk handing out an address twice.
type CorruptError struct {
	Path   string // the state file
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("IPAM store corrupt: %s: %s; refusing to use it (with no pod of this network left on the node, removing state.0 and state.1 starts it empty)", e.Path, e.Reason)
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// OpenStore creates the store's directory and files when missing, fsyncing
// the directories whose entries it created. It does not take the lock. A nil
// log discards the store's messages.
func OpenStore(dataDir, network string, log *slog.Logger) (*Store, error) {
	return openStore(dataDir, network, log, (*os.File).Sync)
}

func openStore(dataDir, network string, log *slog.Logger, sync func(*os.File) error) (*Store, error) {
	if network == "" || strings.ContainsAny(network, "/\x00") || network == "." || network == ".." {
		return nil, fmt.Errorf("invalid network name %q for the IPAM store", network)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{dir: filepath.Join(dataDir, network), log: log, sync: sync}
	if err := s.mkdir(); err != nil {
		return nil, fmt.Errorf("create IPAM store: %w", err)
	}
	created := false
	for i, name := range []string{"lock", "state.0", "state.1"} {
		f, made, err := openOrCreate(filepath.Join(s.dir, name))
		if err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("open IPAM store: %w", err)
		}
		if i == 0 {
			s.lock = f
		} else {
			s.slots[i-1] = f
		}
		created = created || made
	}
	if created {
		if err := s.syncDir(s.dir); err != nil {
			_ = s.Close()
			return nil, err
		}
	}
	return s, nil
}

// mkdir creates the store's directory and missing parents, and fsyncs the
// parent of each one it created.
func (s *Store) mkdir() error {
	var missing []string
	for d := s.dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || !errors.Is(err, fs.ErrNotExist) || d == filepath.Dir(d) {
			break
		}
		missing = append(missing, d)
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	for _, d := range missing {
		if err := s.syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

func openOrCreate(path string) (f *os.File, created bool, err error) {
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		f, err = os.OpenFile(path, os.O_RDWR, 0)
		return f, false, err
	}
	return f, err == nil, err
}

func (s *Store) syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer d.Close()
	if err := s.sync(d); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// Dir is the directory holding this network's state.
func (s *Store) Dir() string { return s.dir }

// Lock takes the store's exclusive lock; it blocks while another plugin
// process holds it. The kernel drops the lock if the holder dies.
func (s *Store) Lock() error {
	for {
		err := unix.Flock(int(s.lock.Fd()), unix.LOCK_EX)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("lock IPAM store %s: %w", s.dir, err)
		}
		return nil
	}
}

// Unlock releases the lock taken by Lock.
func (s *Store) Unlock() error { return unix.Flock(int(s.lock.Fd()), unix.LOCK_UN) }

// Close releases the lock (if held) and the files.
func (s *Store) Close() error {
	var errs []error
	for _, f := range append([]*os.File{s.lock}, s.slots[:]...) {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	return errors.Join(errs...)
}

// Load returns the newest committed state. Call it under the lock. Slots
// that no sequence of crashes can leave make it fail with a *CorruptError.
func (s *Store) Load() (*State, error) {
	s.loaded = false
	var slots [2]slot
	for i, f := range s.slots {
		data, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<30))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f.Name(), err)
		}
		if slots[i], err = parseSlot(i, data); err != nil {
			return nil, s.corrupt(i, err.Error())
		}
	}
	st, err := s.newest(slots)
	if err != nil {
		return nil, err
	}
	s.loaded, s.gen = true, st.Generation
	return st, nil
}

// newest picks the newest committed slot and checks that the other one is
// what the protocol leaves beside it: the previous generation, nothing (only
// beside generation 1), or a torn write of the next generation.
func (s *Store) newest(slots [2]slot) (*State, error) {
	n := 0
	if slots[1].kind == slotCommitted && (slots[0].kind != slotCommitted || slots[1].gen > slots[0].gen) {
		n = 1
	}
	newest, other := slots[n], slots[1-n]
	if newest.kind != slotCommitted {
		return s.uncommitted(slots)
	}
	g := newest.gen
	switch {
	case other.kind == slotCommitted && other.gen == g-1, other.kind == slotEmpty && g == 1:
		return newest.state, nil
	case other.kind == slotIntent && other.gen == g+1:
		s.log.Info("IPAM store: a write was torn before it committed; using the generation before it",
			"file", s.slots[1-n].Name(), "torn", other.gen, "committed", g)
		return newest.state, nil
	}
	return nil, s.corrupt(1-n, fmt.Sprintf("holds %s beside %s in %s", other, newest, filepath.Base(s.slots[n].Name())))
}

// uncommitted handles stores where no generation was ever committed.
func (s *Store) uncommitted(slots [2]slot) (*State, error) {
	switch {
	case slots[0].kind == slotEmpty && slots[1].kind == slotEmpty:
		return newState(), nil
	case slots[0].kind == slotIntent && slots[0].gen == 1 && slots[1].kind == slotEmpty:
		s.log.Warn("IPAM store: the very first write was torn and no generation was ever committed; starting empty",
			"file", s.slots[0].Name())
		return newState(), nil
	}
	i := 0
	if slots[0].kind == slotEmpty {
		i = 1
	}
	return nil, s.corrupt(i, fmt.Sprintf("holds %s, and no generation is committed", slots[i]))
}

func (s *Store) corrupt(i int, reason string) error {
	return &CorruptError{Path: s.slots[i].Name(), Reason: reason}
}

// Save commits st as the next generation. Call it under the lock, after
// Load. It writes the slot not holding the newest committed state in three
// steps, each fsynced before the next begins: an intent header (from now on
// the slot's old content is known to be superseded), the body, and the commit
// header. It returns once the commit is durable.
func (s *Store) Save(st *State) error {
	if !s.loaded {
		return errors.New("IPAM store: Save without a successful Load")
	}
	if err := st.check(); err != nil {
		return fmt.Errorf("refusing to write a state that cannot be read back: %w", err)
	}
	s.loaded = false
	gen := s.gen + 1
	f := s.slots[(gen-1)%2]
	body := encodeBody(st)
	h := header{phase: phaseIntent, gen: gen, bodyLen: len(body), bodyCRC: crc32.ChecksumIEEE(body)}
	if err := s.write(f, 0, h.encode(), false); err != nil {
		return err
	}
	if err := s.write(f, int64(headerSize), body, true); err != nil {
		return err
	}
	h.phase = phaseCommit
	if err := s.write(f, 0, h.encode(), false); err != nil {
		return err
	}
	st.Generation, s.gen, s.loaded = gen, gen, true
	return nil
}

// write writes data at off, cuts the file after it when truncate is set,
// and fsyncs.
func (s *Store) write(f *os.File, off int64, data []byte, truncate bool) error {
	if _, err := f.WriteAt(data, off); err != nil {
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	if truncate {
		if err := f.Truncate(off + int64(len(data))); err != nil {
			return fmt.Errorf("truncate %s: %w", f.Name(), err)
		}
	}
	if err := s.sync(f); err != nil {
		return fmt.Errorf("fsync %s: %w", f.Name(), err)
	}
	return nil
}
