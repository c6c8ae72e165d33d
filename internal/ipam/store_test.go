package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// One flipped bit in the newest slot must stop the store: falling back to
// the older slot would hand the newest claims out a second time.
func TestFlippedBitInNewestSlotIsAnError(t *testing.T) {
	a := newAllocator(t, t.TempDir(), RangeSet{rng("10.0.0.0/24")})
	mustAllocate(t, a, owner(1))           // generation 1, state.0
	second := mustAllocate(t, a, owner(2)) // generation 2, state.1
	slot := filepath.Join(a.Store().Dir(), "state.1")
	data, err := os.ReadFile(slot)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(data, []byte(second.String()+" "))
	if i < 0 {
		t.Fatalf("%s does not record %s:\n%s", slot, second, data)
	}
	last := i + len(second.String()) - 1
	data[last] ^= 1 // 10.0.0.3 -> 10.0.0.2: one bit
	if err := os.WriteFile(slot, data, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := a.Allocate(owner(3), nil)
	if err == nil {
		t.Fatalf("allocate after a bit flip in the newest slot handed out %v (owner %s holds %s)", got, owner(2), second)
	}
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), slot) {
		t.Fatalf("allocate after a bit flip: %v, want ErrCorrupt naming %s", err, slot)
	}
}

const fsizeEnv = "FLATNET_IPAM_TEST_FSIZE"

// A plugin that dies during the very first write leaves a partial slot and
// an empty one. No generation was ever committed, so the store starts empty
// instead of refusing to work for good. The child's writes stop at limit
// bytes (RLIMIT_FSIZE), exactly as if it had been killed there.
func TestTornFirstWriteStartsEmpty(t *testing.T) {
	for _, limit := range []int{30, 73, 80} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			dir := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^TestChildAllocate$")
			cmd.Env = append(os.Environ(), childEnv+"="+dir, "FLATNET_IPAM_TEST_ID=torn", fsizeEnv+"="+fmt.Sprint(limit))
			if out, err := cmd.CombinedOutput(); err == nil {
				t.Fatalf("child allocated with writes limited to %d bytes: %s", limit, out)
			}
			if fi, err := os.Stat(filepath.Join(dir, "testnet", "state.0")); err != nil || fi.Size() != int64(limit) {
				t.Fatalf("state.0 after the torn first write: %v, %v; want %d bytes", fi, err, limit)
			}
			var log bytes.Buffer
			a, _ := openRecorded(t, dir, &log, RangeSet{rng("10.50.0.0/24")})
			st, err := a.Snapshot()
			if err != nil {
				t.Fatalf("load after a torn first write: %v", err)
			}
			if len(st.Claims) != 0 || st.Generation != 0 {
				t.Fatalf("state after a torn first write: %+v, want empty", st)
			}
			if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "no generation was ever committed") {
				t.Fatalf("no warning about starting empty: %q", log.String())
			}
			if got := mustAllocate(t, a, owner(1)); got.String() != "10.50.0.2" {
				t.Fatalf("first allocation after recovery: %s", got)
			}
		})
	}
}

// The very first write cut short by a power cut, as file systems that
// expose zeros in a grown file can leave it.
func TestFirstHeaderCutByPowerLossStartsEmpty(t *testing.T) {
	first := header{phase: phaseIntent, gen: 1}.encode()
	for _, tc := range []struct {
		name  string
		slot0 []byte
		ok    bool
	}{
		{"zeros", make([]byte, headerSize), true},
		{"part of the header, then zeros", append(slices.Clone(first[:30]), make([]byte, headerSize-30)...), true},
		{"zeros longer than a header", make([]byte, headerSize+1), false},
		{"another header's prefix", []byte(magicV2 + phaseCommit), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := openRecorded(t, t.TempDir(), nil)
			writeFile(t, filepath.Join(a.Store().Dir(), "state.0"), tc.slot0)
			st, err := a.Snapshot()
			if tc.ok && (err != nil || len(st.Claims) != 0) || !tc.ok && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("load: %+v, %v; want a fresh store: %v", st, err, tc.ok)
			}
		})
	}
}

// limitFileSize makes writes beyond n bytes fail (EFBIG) in this process.
func limitFileSize(t *testing.T) {
	s := os.Getenv(fsizeEnv)
	if s == "" {
		return
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: n, Max: n}); err != nil {
		t.Fatal(err)
	}
}

// recorder is a Store's fsync that remembers what each call made durable.
type recorder struct{ syncs []synced }

type synced struct {
	path string
	data []byte // the file's content when it was fsynced; nil for a directory
}

func (r *recorder) sync(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	var data []byte
	if !fi.IsDir() {
		if data, err = os.ReadFile(f.Name()); err != nil {
			return err
		}
	}
	r.syncs = append(r.syncs, synced{path: f.Name(), data: data})
	return f.Sync()
}

// openRecorded is newAllocator with the store's fsyncs recorded and its
// messages logged as text to log (when not nil).
func openRecorded(t *testing.T, dir string, log io.Writer, sets ...RangeSet) (*Allocator, *recorder) {
	t.Helper()
	if len(sets) == 0 {
		sets = []RangeSet{{rng("10.0.0.0/24")}}
	}
	if err := Canonicalize(sets); err != nil {
		t.Fatal(err)
	}
	var logger *slog.Logger
	if log != nil {
		logger = slog.New(slog.NewTextHandler(log, nil))
	}
	rec := &recorder{}
	s, err := openStore(dir, "testnet", logger, rec.sync)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return &Allocator{cfg: Config{Network: "testnet", DataDir: dir, Sets: sets}, store: s}, rec
}

// Save returns only once the commit is durable, and each step is durable
// before the next begins: a crash can only ever leave what the previous
// step made durable plus part of the current one.
func TestSaveMakesEachStepDurableBeforeTheNext(t *testing.T) {
	top := t.TempDir()
	a, rec := openRecorded(t, filepath.Join(top, "a", "b"), nil)
	var dirs []string
	for _, s := range rec.syncs {
		dirs = append(dirs, s.path)
	}
	slices.Sort(dirs)
	want := []string{top, top + "/a", top + "/a/b", top + "/a/b/testnet"}
	if !slices.Equal(dirs, want) {
		t.Fatalf("fsyncs while creating the store: %v, want the directory of every new entry %v", dirs, want)
	}
	for i, slot := range []string{"state.0", "state.1", "state.0", "state.1"} {
		path := filepath.Join(a.Store().Dir(), slot)
		old, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		mark := len(rec.syncs)
		mustAllocate(t, a, owner(i))
		now, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		checkSteps(t, rec.syncs[mark:], path, uint64(i+1), old, now)
	}
}

func checkSteps(t *testing.T, syncs []synced, path string, gen uint64, old, now []byte) {
	t.Helper()
	if len(syncs) != 3 {
		t.Fatalf("generation %d: %d fsyncs, want 3 (intent, body, commit)", gen, len(syncs))
	}
	for i, phase := range []string{phaseIntent, phaseIntent, phaseCommit} {
		h, err := parseHeader(syncs[i].data)
		if syncs[i].path != path || err != nil || h.phase != phase || h.gen != gen {
			t.Fatalf("generation %d, fsync %d: %s %+v %v; want %s with %s of generation %d", gen, i+1, syncs[i].path, h, err, path, phase, gen)
		}
	}
	if len(old) > headerSize && !bytes.Equal(syncs[0].data[headerSize:], old[headerSize:]) {
		t.Fatalf("generation %d: the body changed before the intent header was durable", gen)
	}
	if !bytes.Equal(syncs[1].data[headerSize:], now[headerSize:]) {
		t.Fatalf("generation %d: the body was not durable before the commit header was written", gen)
	}
	if !bytes.Equal(syncs[2].data, now) {
		t.Fatalf("generation %d: written after the last fsync:\n%q\nwant\n%q", gen, now, syncs[2].data)
	}
}

// A plugin killed at any point of a save leaves the slot it was writing in
// one of the states below; the store then holds the previous generation, and
// the next save overwrites the same slot, never the good one.
func TestCrashAtEveryStepOfSaveLosesOnlyThatSave(t *testing.T) {
	a, rec := openRecorded(t, t.TempDir(), nil)
	mustAllocate(t, a, owner(1)) // generation 1, state.0
	mustAllocate(t, a, owner(2)) // generation 2, state.1
	path0, path1 := filepath.Join(a.Store().Dir(), "state.0"), filepath.Join(a.Store().Dir(), "state.1")
	before, good := readFile(t, path0), readFile(t, path1)
	mark := len(rec.syncs)
	mustAllocate(t, a, owner(3)) // generation 3, state.0
	after := readFile(t, path0)
	intent, body := rec.syncs[mark].data, rec.syncs[mark+1].data
	mid := headerSize + (len(body)-headerSize)/2
	tornBody := append(slices.Clone(body[:mid]), intent[min(mid, len(intent)):]...)
	for _, tc := range []struct {
		name   string
		slot0  []byte
		gen    uint64
		owners int
	}{
		{"killed before writing", before, 2, 2},
		{"intent header durable", intent, 2, 2},
		{"killed while writing the body", tornBody, 2, 2},
		{"body durable, commit header not written", body, 2, 2},
		{"commit header durable", after, 3, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			writeFile(t, path0, tc.slot0)
			writeFile(t, path1, good)
			st, err := a.Snapshot()
			if err != nil || st.Generation != tc.gen || len(st.Claims) != tc.owners {
				t.Fatalf("load: %+v, %v; want generation %d with %d claims", st, err, tc.gen, tc.owners)
			}
			mustAllocate(t, a, owner(4))
			st, err = a.Snapshot()
			if err != nil || st.Generation != tc.gen+1 || len(st.Claims) != tc.owners+1 {
				t.Fatalf("after the next save: %+v, %v", st, err)
			}
			if tc.gen == 2 && !bytes.Equal(readFile(t, path1), good) {
				t.Fatal("the next save overwrote the slot holding the committed generation")
			}
		})
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// committedSlot is a well-formed slot of any generation, for states no
// crash leaves.
func committedSlot(gen uint64, st *State) []byte {
	body := encodeBody(st)
	h := header{phase: phaseCommit, gen: gen, bodyLen: len(body), bodyCRC: crc32.ChecksumIEEE(body)}
	return append(h.encode(), body...)
}

func flip(b []byte, i int) []byte {
	b = slices.Clone(b)
	b[i] ^= 1
	return b
}

// Whatever no sequence of crashes can leave is an error naming the file,
// and nothing is allocated or written.
func TestLoadRefusesWhatNoCrashLeaves(t *testing.T) {
	a, _ := openRecorded(t, t.TempDir(), nil)
	for i := 1; i <= 3; i++ {
		mustAllocate(t, a, owner(i)) // generations 1, 2, 3: state.0 holds 3, state.1 holds 2
	}
	path0, path1 := filepath.Join(a.Store().Dir(), "state.0"), filepath.Join(a.Store().Dir(), "state.1")
	s0, s1 := readFile(t, path0), readFile(t, path1)
	intent := func(gen uint64) []byte { return header{phase: phaseIntent, gen: gen}.encode() }
	for _, tc := range []struct {
		name         string
		slot0, slot1 []byte
		blamed       string
	}{
		{"bit flip in the newest body", flip(s0, len(s0)-3), s1, path0},
		{"bit flip in the newest header", flip(s0, 40), s1, path0},
		{"bit flip in the older slot", s0, flip(s1, len(s1)-3), path1},
		{"newest cut short", s0[:len(s0)-4], s1, path0},
		{"older slot emptied", s0, nil, path1},
		{"newest emptied", nil, s1, path0},
		{"slots swapped", s1, s0, path0},
		{"intent for a later generation", s0, intent(6), path1},
		{"intent for an older generation", s0, intent(2), path1},
		{"generation gap", s0, committedSlot(6, newState()), path0},
		{"two intents", intent(1), intent(2), path0},
		{"first write of garbage", []byte("flatnet-ipam v2 garbage"), nil, path0},
		{"v1 slot failing its checksum", s0, []byte(v1Gen2[:len(v1Gen2)-2] + "f\n"), path1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			writeFile(t, path0, tc.slot0)
			writeFile(t, path1, tc.slot1)
			got, err := a.Allocate(owner(9), nil)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.blamed+":") {
				t.Fatalf("allocate: %v, %v; want ErrCorrupt naming %s", got, err, tc.blamed)
			}
			if !bytes.Equal(readFile(t, path0), tc.slot0) || !bytes.Equal(readFile(t, path1), tc.slot1) {
				t.Fatal("a corrupt store was written to")
			}
		})
	}
}

// The v1 files written by earlier releases, byte for byte.
const (
	v1Gen1 = "flatnet-ipam v1\ngeneration 1\ncursor 0 10.0.0.2\nclaim 10.0.0.2 0 c1:eth0\nend 973061e0\n"
	v1Gen2 = "flatnet-ipam v1\ngeneration 2\ncursor 0 10.0.0.3\nclaim 10.0.0.2 0 c1:eth0\nclaim 10.0.0.3 0 c2:eth0\nend 67d8aae2\n"
)

// A v1 store is read as it is; the next two saves turn its slots into v2.
func TestV1StoreIsReadAndMigrated(t *testing.T) {
	a, _ := openRecorded(t, t.TempDir(), nil)
	path0, path1 := filepath.Join(a.Store().Dir(), "state.0"), filepath.Join(a.Store().Dir(), "state.1")
	writeFile(t, path0, []byte(v1Gen1))
	if got, err := a.Lookup(owner(1)); err != nil || len(got) != 1 || got[0].Addr.String() != "10.0.0.2" {
		t.Fatalf("lookup in a v1 store holding generation 1: %v, %v", got, err)
	}
	writeFile(t, path1, []byte(v1Gen2))
	if got := mustAllocate(t, a, owner(3)); got.String() != "10.0.0.4" {
		t.Fatalf("allocate in a v1 store: %s, want 10.0.0.4 (after the v1 cursor)", got)
	}
	if !strings.HasPrefix(string(readFile(t, path0)), "flatnet-ipam v2 commit 00000000000000000003 ") || string(readFile(t, path1)) != v1Gen2 {
		t.Fatalf("after the first save: state.0 %q, state.1 %q", readFile(t, path0), readFile(t, path1))
	}
	mustAllocate(t, a, owner(4))
	st, err := a.Snapshot()
	if err != nil || st.Generation != 4 || len(st.Claims) != 4 || !strings.HasPrefix(string(readFile(t, path1)), magicV2+phaseCommit) {
		t.Fatalf("after the second save: %+v, %v, state.1 %q", st, err, readFile(t, path1))
	}
}
