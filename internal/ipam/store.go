package ipam

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Store keeps a State on disk in two slots, state.0 and state.1, each
// "generation, records, checksum". A save writes the slot that does not hold
// the newest valid state; a load takes the valid slot with the higher
// generation. See the package doc for why this is crash-safe.
type Store struct {
	dir     string
	lock    *os.File
	slots   [2]*os.File
	current int // slot holding the state returned by the last Load; -1 none
}

// OpenStore creates the store's directory and files when missing. It does
// not take the lock.
func OpenStore(dataDir, network string) (*Store, error) {
	if network == "" || strings.ContainsAny(network, "/\x00") || network == "." || network == ".." {
		return nil, fmt.Errorf("invalid network name %q for the IPAM store", network)
	}
	dir := filepath.Join(dataDir, network)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create IPAM store: %w", err)
	}
	s := &Store{dir: dir, current: -1}
	var err error
	if s.lock, err = os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return nil, fmt.Errorf("open IPAM lock: %w", err)
	}
	for i := range s.slots {
		if s.slots[i], err = os.OpenFile(filepath.Join(dir, "state."+strconv.Itoa(i)), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("open IPAM state: %w", err)
		}
	}
	return s, nil
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

// ErrCorrupt says that neither slot holds a valid state although one was
// written: the store must not be used until an operator looks at it.
var ErrCorrupt = errors.New("IPAM store corrupt: no valid state in state.0 or state.1")

// Load reads the newest valid state. Call it under the lock.
func (s *Store) Load() (*State, error) {
	var best *State
	s.current = -1
	written := false
	for i, f := range s.slots {
		data, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<30))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f.Name(), err)
		}
		if len(data) == 0 {
			continue
		}
		written = true
		st, err := decode(data)
		if err != nil {
			continue // torn or damaged: the other slot has the previous state
		}
		if best == nil || st.Generation > best.Generation {
			best, s.current = st, i
		}
	}
	if best == nil {
		if written {
			return nil, ErrCorrupt
		}
		return newState(), nil
	}
	return best, nil
}

// Save writes st as the next generation into the slot not holding the
// current state. Call it under the lock, after Load.
func (s *Store) Save(st *State) error {
	if err := st.check(); err != nil {
		return fmt.Errorf("refusing to write a state that cannot be read back: %w", err)
	}
	st.Generation++
	target := s.slots[(s.current+1+2)%2]
	if s.current < 0 {
		target = s.slots[0]
	}
	data := encode(st)
	if _, err := target.WriteAt(data, 0); err != nil {
		return fmt.Errorf("write %s: %w", target.Name(), err)
	}
	if err := target.Truncate(int64(len(data))); err != nil {
		return fmt.Errorf("truncate %s: %w", target.Name(), err)
	}
	if target == s.slots[0] {
		s.current = 0
	} else {
		s.current = 1
	}
	return nil
}

const header = "flatnet-ipam v1\n"

// encode renders a state as text: one record a line, then "end <crc32>" over
// everything before it. Lines are sorted so that a diff of two states is
// readable.
func encode(st *State) []byte {
	var b bytes.Buffer
	b.WriteString(header)
	fmt.Fprintf(&b, "generation %d\n", st.Generation)
	sets := make([]int, 0, len(st.Cursors))
	for set := range st.Cursors {
		sets = append(sets, set)
	}
	slices.Sort(sets)
	for _, set := range sets {
		fmt.Fprintf(&b, "cursor %d %s\n", set, st.Cursors[set])
	}
	addrs := make([]netip.Addr, 0, len(st.Claims))
	for a := range st.Claims {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, func(x, y netip.Addr) int { return x.Compare(y) })
	for _, a := range addrs {
		c := st.Claims[a]
		fmt.Fprintf(&b, "claim %s %d %s\n", a, c.Set, c.Owner)
	}
	fmt.Fprintf(&b, "end %08x\n", crc32.ChecksumIEEE(b.Bytes()))
	return b.Bytes()
}

func decode(data []byte) (*State, error) {
	st := newState()
	if !bytes.HasPrefix(data, []byte(header)) {
		return nil, errors.New("bad header")
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), len(data)+1)
	offset := 0
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "end" {
			want := fmt.Sprintf("%08x", crc32.ChecksumIEEE(data[:offset]))
			if f[1] != want {
				return nil, errors.New("checksum mismatch")
			}
			return st, st.check() // bytes after the end line are a longer old state's tail
		}
		offset += len(line) + 1
		if err := decodeLine(st, f); err != nil {
			return nil, fmt.Errorf("line %q: %w", line, err)
		}
	}
	return nil, errors.New("no end line")
}

func decodeLine(st *State, f []string) error {
	var err error
	switch {
	case len(f) == 2 && f[0] == "flatnet-ipam":
	case len(f) == 2 && f[0] == "generation":
		st.Generation, err = strconv.ParseUint(f[1], 10, 64)
	case len(f) == 3 && f[0] == "cursor":
		var set int
		var a netip.Addr
		if set, err = strconv.Atoi(f[1]); err == nil {
			a, err = netip.ParseAddr(f[2])
			st.Cursors[set] = a
		}
	case len(f) == 4 && f[0] == "claim":
		var a netip.Addr
		var set int
		if a, err = netip.ParseAddr(f[1]); err != nil {
			return err
		}
		if set, err = strconv.Atoi(f[2]); err != nil {
			return err
		}
		o, err := parseOwner(f[3])
		if err != nil {
			return err
		}
		if _, dup := st.Claims[a]; dup {
			return fmt.Errorf("%s is claimed twice", a)
		}
		st.Claims[a] = Claim{Owner: o, Set: set}
	default:
		return errors.New("unknown record")
	}
	return err
}
