package ipam

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Owner identifies an attachment: the runtime's (containerID, ifname) pair,
// the same key CNI GC uses for its valid-attachments list.
type Owner struct {
	ContainerID string
	IfName      string
}

func (o Owner) String() string { return o.ContainerID + ":" + o.IfName }

// parseOwner reads the form written by Owner.String. Container IDs may not
// contain ':' (CNI spec) and Linux interface names cannot, so it is unambiguous.
func parseOwner(s string) (Owner, bool) {
	cid, ifname, ok := strings.Cut(s, ":")
	if !ok || cid == "" || ifname == "" {
		return Owner{}, false
	}
	return Owner{ContainerID: cid, IfName: ifname}, true
}

// Store is the on-disk allocation state of one network. Layout:
//
//	<dir>/lock                     flock(2) target serialising plugin processes
//	<dir>/ips/<addr>     -> owner  symlink: the claim of one address
//	<dir>/owners/<owner>:<set> -> addr   symlink: index from owner to its address
//	<dir>/last/<set>     -> addr   symlink: round-robin cursor of a range set
//
// Every record is a symlink because symlink(2) creates a name and its content
// in one atomic step: a process killed at any instant leaves either no record
// or a complete one, never a half-written file. See the package doc for the
// ordering rules that keep the two directories consistent.
type Store struct {
	dir  string
	lock *os.File
}

// OpenStore creates the store's directories when missing and opens its lock
// file. It does not take the lock.
func OpenStore(dataDir, network string) (*Store, error) {
	if network == "" || strings.ContainsAny(network, "/\x00") || network == "." || network == ".." {
		return nil, fmt.Errorf("invalid network name %q for the IPAM store", network)
	}
	dir := filepath.Join(dataDir, network)
	for _, sub := range []string{"ips", "owners", "last"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("create IPAM store: %w", err)
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open IPAM lock: %w", err)
	}
	return &Store{dir: dir, lock: f}, nil
}

// Dir is the directory holding this network's records.
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
func (s *Store) Unlock() error {
	return unix.Flock(int(s.lock.Fd()), unix.LOCK_UN)
}

// Close releases the lock (if held) and the lock file.
func (s *Store) Close() error { return s.lock.Close() }

func (s *Store) ipPath(a netip.Addr) string { return filepath.Join(s.dir, "ips", a.String()) }

func (s *Store) indexPath(o Owner, set int) string {
	return filepath.Join(s.dir, "owners", o.String()+":"+strconv.Itoa(set))
}

// Claim records addr as owned by o. It reports false, with no error, when the
// address is already claimed (by anyone).
func (s *Store) Claim(addr netip.Addr, o Owner) (bool, error) {
	err := os.Symlink(o.String(), s.ipPath(addr))
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claim %s: %w", addr, err)
	}
	return true, nil
}

// Holder returns the owner of a claimed address. ok is false for a free
// address; a record that cannot be parsed is returned with ok and a zero Owner
// so that it is never handed out again before GC removes it.
func (s *Store) Holder(addr netip.Addr) (o Owner, ok bool, err error) {
	target, err := os.Readlink(s.ipPath(addr))
	if errors.Is(err, fs.ErrNotExist) {
		return Owner{}, false, nil
	}
	if err != nil {
		return Owner{}, false, fmt.Errorf("read claim of %s: %w", addr, err)
	}
	o, _ = parseOwner(target)
	return o, true, nil
}

// Unclaim removes the record of addr; a missing record is not an error.
func (s *Store) Unclaim(addr netip.Addr) error {
	if err := os.Remove(s.ipPath(addr)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("release %s: %w", addr, err)
	}
	return nil
}

// Index returns the address that owner o holds (or was about to claim) in
// range set number set.
func (s *Store) Index(o Owner, set int) (netip.Addr, bool, error) {
	return readAddrLink(s.indexPath(o, set))
}

// SetIndex points owner o's entry for a range set at addr, replacing any
// previous entry atomically.
func (s *Store) SetIndex(o Owner, set int, addr netip.Addr) error {
	return replaceLink(s.indexPath(o, set), addr.String())
}

// DropIndex removes owner o's entry for a range set; missing is fine.
func (s *Store) DropIndex(o Owner, set int) error {
	if err := os.Remove(s.indexPath(o, set)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("drop index of %s: %w", o, err)
	}
	return nil
}

// LastReserved is the round-robin cursor of a range set.
func (s *Store) LastReserved(set int) (netip.Addr, bool, error) {
	return readAddrLink(filepath.Join(s.dir, "last", strconv.Itoa(set)))
}

// SetLastReserved moves the round-robin cursor of a range set.
func (s *Store) SetLastReserved(set int, addr netip.Addr) error {
	return replaceLink(filepath.Join(s.dir, "last", strconv.Itoa(set)), addr.String())
}

// Record is one claimed address as found on disk.
type Record struct {
	Addr  netip.Addr
	Owner Owner // zero when the record is unreadable
}

// Claims lists every claimed address.
func (s *Store) Claims() ([]Record, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, "ips"))
	if err != nil {
		return nil, fmt.Errorf("list IPAM claims: %w", err)
	}
	var out []Record
	for _, e := range entries {
		addr, err := netip.ParseAddr(e.Name())
		if err != nil {
			continue // not ours: leave foreign files alone
		}
		o, ok, err := s.Holder(addr)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, Record{Addr: addr, Owner: o})
		}
	}
	return out, nil
}

// IndexEntry is one owner index entry.
type IndexEntry struct {
	Owner Owner
	Set   int
}

// Indexes lists every owner index entry.
func (s *Store) Indexes() ([]IndexEntry, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, "owners"))
	if err != nil {
		return nil, fmt.Errorf("list IPAM owners: %w", err)
	}
	var out []IndexEntry
	for _, e := range entries {
		name := e.Name()
		i := strings.LastIndexByte(name, ':')
		if i < 0 || strings.HasPrefix(name, ".tmp") {
			continue
		}
		set, err := strconv.Atoi(name[i+1:])
		o, ok := parseOwner(name[:i])
		if err != nil || !ok {
			continue
		}
		out = append(out, IndexEntry{Owner: o, Set: set})
	}
	return out, nil
}

func readAddrLink(path string) (netip.Addr, bool, error) {
	target, err := os.Readlink(path)
	if errors.Is(err, fs.ErrNotExist) {
		return netip.Addr{}, false, nil
	}
	if err != nil {
		return netip.Addr{}, false, fmt.Errorf("read %s: %w", path, err)
	}
	a, err := netip.ParseAddr(target)
	if err != nil {
		return netip.Addr{}, false, nil // garbage: treat as absent, it will be overwritten
	}
	return a, true, nil
}

// replaceLink makes path a symlink to target atomically: a temporary symlink
// is renamed over the old one, so readers see the old or the new, never none.
func replaceLink(path, target string) error {
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	_ = os.Remove(tmp) // left by a crashed process
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
