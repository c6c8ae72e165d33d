package ipam

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The bytes of one slot. A v2 slot is a fixed-size header line and a body:
//
//	flatnet-ipam v2 commit 00000000000000000042 0000000123 1a2b3c4d 5e6f7a8b
//	cursor 0 10.99.0.7
//	claim 10.99.0.2 0 0123abcd:eth0
//
// The header holds the phase (intent or commit), the generation, the body's
// length and CRC-32, and a CRC-32 of the header itself. v1 slots ("flatnet-ipam
// v1", a generation line, the records and "end <crc32>") are still read.
const (
	magicV1     = "flatnet-ipam v1\n"
	magicV2     = "flatnet-ipam v2 "
	phaseIntent = "intent"
	phaseCommit = "commit"
	headerSize  = len(magicV2) + len(phaseCommit) + 1 + 20 + 1 + 10 + 1 + 8 + 1 + 8 + 1
)

type header struct {
	phase   string
	gen     uint64
	bodyLen int
	bodyCRC uint32
}

func (h header) encode() []byte {
	s := fmt.Sprintf("%s%s %020d %010d %08x", magicV2, h.phase, h.gen, h.bodyLen, h.bodyCRC)
	return fmt.Appendf(nil, "%s %08x\n", s, crc32.ChecksumIEEE([]byte(s)))
}

// parseHeader accepts exactly the bytes encode writes, own checksum included.
func parseHeader(data []byte) (header, error) {
	if len(data) < headerSize {
		return header{}, fmt.Errorf("%d bytes, shorter than a header", len(data))
	}
	line := data[:headerSize]
	f := strings.Fields(string(line))
	if len(f) != 7 || f[2] != phaseIntent && f[2] != phaseCommit {
		return header{}, errors.New("header damaged")
	}
	h := header{phase: f[2]}
	gen, err1 := strconv.ParseUint(f[3], 10, 64)
	n, err2 := strconv.ParseUint(f[4], 10, 31)
	sum, err3 := strconv.ParseUint(f[5], 16, 32)
	h.gen, h.bodyLen, h.bodyCRC = gen, int(n), uint32(sum)
	if errors.Join(err1, err2, err3) != nil || !bytes.Equal(h.encode(), line) {
		return header{}, errors.New("header damaged (checksum or format)")
	}
	return h, nil
}

// slot is what one state file holds, as far as the protocol is concerned.
type slot struct {
	kind  slotKind
	gen   uint64
	state *State // committed slots only
}

type slotKind int

const (
	slotEmpty     slotKind = iota
	slotIntent             // a write of generation gen began; it never committed
	slotCommitted          // generation gen, whole and verified
)

func (s slot) String() string {
	switch s.kind {
	case slotIntent:
		return fmt.Sprintf("an uncommitted write of generation %d", s.gen)
	case slotCommitted:
		return fmt.Sprintf("committed generation %d", s.gen)
	}
	return "empty"
}

// parseSlot reads the file of slot index. Any content no write of the
// protocol can leave is an error: the caller reports the store corrupt.
func parseSlot(index int, data []byte) (slot, error) {
	switch {
	case len(data) == 0:
		return slot{kind: slotEmpty}, nil
	case bytes.HasPrefix(data, []byte(magicV1)):
		st, err := decodeV1(data)
		if err != nil {
			return slot{}, fmt.Errorf("format v1: %w (v1 cannot tell a torn write from damage)", err)
		}
		return checkParity(index, slot{kind: slotCommitted, gen: st.Generation, state: st})
	case index == 0 && tornFirstHeader(data):
		return slot{kind: slotIntent, gen: 1}, nil
	}
	h, err := parseHeader(data)
	if err != nil {
		return slot{}, err
	}
	if h.phase == phaseIntent {
		return checkParity(index, slot{kind: slotIntent, gen: h.gen})
	}
	body := data[headerSize:]
	if len(body) != h.bodyLen || crc32.ChecksumIEEE(body) != h.bodyCRC {
		return slot{}, fmt.Errorf("committed generation %d: body of %d bytes fails its checksum (header: %d bytes)", h.gen, len(body), h.bodyLen)
	}
	st := newState()
	st.Generation = h.gen
	if err := decodeRecords(st, body); err != nil {
		return slot{}, fmt.Errorf("committed generation %d: %w", h.gen, err)
	}
	return checkParity(index, slot{kind: slotCommitted, gen: h.gen, state: st})
}

// tornFirstHeader reports whether data is what the very first write can
// leave when it stops inside its header: a prefix of the intent header of
// generation 1 (a file size limit), then zeros (a power cut while the file
// grew, on file systems that expose them). A kill cannot split the header's
// one write, and a committed slot is always longer than a header.
func tornFirstHeader(data []byte) bool {
	if len(data) > headerSize {
		return false
	}
	return bytes.HasPrefix(header{phase: phaseIntent, gen: 1}.encode(), bytes.TrimRight(data, "\x00"))
}

// checkParity: generation g is always written to slot (g-1) mod 2.
func checkParity(index int, s slot) (slot, error) {
	if s.gen == 0 || (s.gen-1)%2 != uint64(index) {
		return slot{}, fmt.Errorf("%s does not belong in slot %d", s, index)
	}
	return s, nil
}

// encodeBody renders the records, one a line, sorted so that a diff of two
// states is readable.
func encodeBody(st *State) []byte {
	var b bytes.Buffer
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
	return b.Bytes()
}

func decodeRecords(st *State, body []byte) error {
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 4096), len(body)+1)
	for sc.Scan() {
		if err := decodeRecord(st, strings.Fields(sc.Text())); err != nil {
			return fmt.Errorf("line %q: %w", sc.Text(), err)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return st.check()
}

// decodeV1 reads the v1 form: magic, "generation N", the records, then
// "end <crc32>" over everything before it; bytes after the end line are the
// tail of a longer older state.
func decodeV1(data []byte) (*State, error) {
	st := newState()
	var body bytes.Buffer
	for offset, n := 0, 0; offset < len(data); n++ {
		line, _, _ := bytes.Cut(data[offset:], []byte("\n"))
		f := strings.Fields(string(line))
		switch {
		case n == 0: // the magic
		case n == 1:
			gen, ok := strings.CutPrefix(string(line), "generation ")
			var err error
			if st.Generation, err = strconv.ParseUint(gen, 10, 64); !ok || err != nil {
				return nil, errors.New("no generation line")
			}
		case len(f) == 2 && f[0] == "end":
			if f[1] != fmt.Sprintf("%08x", crc32.ChecksumIEEE(data[:offset])) {
				return nil, errors.New("checksum mismatch")
			}
			if err := decodeRecords(st, body.Bytes()); err != nil {
				return nil, err
			}
			return st, nil
		default:
			body.Write(line)
			body.WriteByte('\n')
		}
		offset += len(line) + 1
	}
	return nil, errors.New("no end line")
}

func decodeRecord(st *State, f []string) error {
	switch {
	case len(f) == 3 && f[0] == "cursor":
		set, err := strconv.Atoi(f[1])
		if err != nil {
			return err
		}
		st.Cursors[set], err = netip.ParseAddr(f[2])
		return err
	case len(f) == 4 && f[0] == "claim":
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			return err
		}
		set, err := strconv.Atoi(f[2])
		if err != nil {
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
		return nil
	}
	return errors.New("unknown record")
}
