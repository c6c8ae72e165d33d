// Package nft is the nftables layer under every table flatnetd owns (the
// service proxy's, egress's): sigs.k8s.io/knftables, as kube-proxy uses it,
// adapted where measurement showed it slow:
//
//   - Run hands nft one command per set for a run of element additions
//     (knftables writes one per element, and nft sends the kernel a message
//     per command);
//   - List, ListRules and MapKeys read over netlink (google/nftables)
//     instead of running `nft list`, which reads every element of every
//     set to print a name;
//   - a refused transaction is an *Error naming the errno, the refused
//     command and the object nft marks in it (a map key, a chain name);
//     IsNotFound and IsAlreadyExists read it and knftables' own errors
//     alike (kernel_test.go provokes both against the kernel: knftables'
//     Fake accepts a second value for a map key and deleting a missing
//     element, the kernel refuses both).
//
// Design notes (kernel state): the layer keeps none of its own. Each engine
// owns one table per family and commits to it in one transaction per sync
// (nft -f, atomic: the kernel applies all of it or none). Family is the one
// IP-family type of the engines.
package nft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"

	gnftables "github.com/google/nftables"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"
)

// New returns the nftables interface of table in family fam:
// knftables' own (checking, the Fake's API), except that Run hands nft one
// command per set for a run of element additions, where knftables renders
// one command per element, and listings go over netlink.
//
// That is where a full sync's time went: nft turns each command into its
// own netlink message and the kernel handles each on its own. Loading the
// full-sync transaction of 10,000 Services x 2 endpoints with a chain per
// Service (70,000 commands, 40,000 of them elements) with `nft -f` took
// 0.85-0.90 s user + 0.52-0.58 s system CPU; the same transaction with its
// elements merged into one command per set, 0.60-0.67 s + 0.37-0.44 s (3
// loads each, one after the other). A prototype of balance.go's design (one
// shared chain, one endpoint map) loaded its 60,000 elements one command
// each at about what the 70,000 commands cost (0.90-0.98 s + 0.48-0.58 s);
// merged, 0.36-0.50 s + 0.26-0.27 s.
func New(fam Family, table string) (knftables.Interface, error) {
	nft, err := knftables.New(fam.NFT(), table, knftables.UseNetlink)
	if err != nil {
		return nil, err
	}
	path, err := exec.LookPath("nft")
	if err != nil {
		return nil, err
	}
	conn, err := gnftables.New()
	if err != nil {
		return nil, err
	}
	return &mergingNFTables{Interface: nft, path: path, conn: conn, gfamily: families[fam].netlink, table: table}, nil
}

type mergingNFTables struct {
	knftables.Interface
	path    string
	conn    *gnftables.Conn // a netlink socket per call, in the caller's namespace
	gfamily gnftables.TableFamily
	table   string
	mu      sync.Mutex
	buf     bytes.Buffer
}

// List lists the names of the table's objects of a type over netlink (as
// knftables does with UseNetlink), but the anonymous sets of rules, and an
// empty list when the table does not exist. Without netlink knftables runs
// `nft list table`, which reads every element of every set from the kernel
// to print the names: 0.4 s a call with 10,000 Services.
func (n *mergingNFTables) List(ctx context.Context, objectType string) ([]string, error) {
	tables, err := n.conn.ListTablesOfFamily(n.gfamily)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *gnftables.Table) bool { return t.Name == n.table }) {
		return nil, nil
	}
	names, err := n.Interface.List(ctx, objectType)
	// Netlink lists the anonymous sets of rules ("__set0", "__map0") too.
	return slices.DeleteFunc(names, func(name string) bool { return strings.HasPrefix(name, "__") }), err
}

// ListRules lists the rules of chain over netlink, with their handles but
// not their text (knftables runs `nft --json list chain`, a process per
// call): the proxy only counts them (see verify).
func (n *mergingNFTables) ListRules(_ context.Context, chain string) ([]*knftables.Rule, error) {
	rules, err := n.conn.GetRules(&gnftables.Table{Name: n.table, Family: n.gfamily}, &gnftables.Chain{Name: chain})
	if err != nil {
		// google/nftables formats the errno away (%v): match its text
		if errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), unix.ENOENT.Error()) {
			return nil, nil // no such table or chain: no rules
		}
		return nil, fmt.Errorf("list rules of %s: %w", chain, err)
	}
	out := make([]*knftables.Rule, len(rules))
	for i, r := range rules {
		out[i] = &knftables.Rule{Chain: chain, Handle: knftables.PtrTo(int(r.Handle))}
	}
	return out, nil
}

// MapKeys lists the keys of map name over netlink, as the kernel stores
// them: each field of a concatenation padded to 4 bytes (the proxy's
// restart reads its Service maps back this way). Listing them with knftables runs `nft --json
// list map`, which took 0.4 s for the 10,000 elements of a restart.
func (n *mergingNFTables) MapKeys(name string) ([][]byte, error) {
	elems, err := n.conn.GetSetElements(&gnftables.Set{Table: &gnftables.Table{Name: n.table, Family: n.gfamily}, Name: name})
	if err != nil {
		if strings.Contains(err.Error(), unix.ENOENT.Error()) {
			return nil, nil // no such table or map
		}
		return nil, fmt.Errorf("list map %s: %w", name, err)
	}
	keys := make([][]byte, len(elems))
	for i, e := range elems {
		keys[i] = e.Key
	}
	return keys, nil
}

// Run renders tx, merges its element additions and runs it with `nft -f -`,
// as one transaction.
func (n *mergingNFTables) Run(ctx context.Context, tx *knftables.Transaction) error {
	text := tx.String()
	if i := strings.Index(text, "# ERROR: "); i >= 0 {
		return fmt.Errorf("nftables transaction: %s", strings.TrimSpace(text[i+len("# ERROR: "):]))
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.buf.Reset()
	mergeElementAdds(&n.buf, text)
	cmd := exec.CommandContext(ctx, n.path, "-f", "-")
	cmd.Stdin = &n.buf
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if stderr.Len() > 0 {
			return parseError(stderr.String())
		}
		return fmt.Errorf("nft: %w", err)
	}
	return nil
}

// mergeElementAdds copies the nft commands of text to w, joining each run
// of consecutive "add element FAMILY TABLE SET { E }" lines for the same set
// into one "add element FAMILY TABLE SET { E1, E2, ... }". Other lines, and
// the order of everything, are kept. An element is what " { " and the
// closing " }" delimit; one whose text has braces, or more than a comment's
// two quotes, is left on its own line.
func mergeElementAdds(w *bytes.Buffer, text string) {
	var head string // the open run's "add element ... SET", or ""
	for line := range strings.Lines(text) {
		line = strings.TrimSuffix(line, "\n")
		h, body, ok := splitElementAdd(line)
		switch {
		case ok && h == head:
			w.WriteString(", ")
			w.WriteString(body)
			continue
		case head != "":
			w.WriteString(" }\n")
			head = ""
		}
		if ok {
			head = h
			w.WriteString(h)
			w.WriteString(" { ")
			w.WriteString(body)
			continue
		}
		w.WriteString(line)
		w.WriteByte('\n')
	}
	if head != "" {
		w.WriteString(" }\n")
	}
}

func splitElementAdd(line string) (head, body string, ok bool) {
	if !strings.HasPrefix(line, "add element ") || !strings.HasSuffix(line, " }") {
		return "", "", false
	}
	head, body, ok = strings.Cut(line[:len(line)-2], " { ")
	if !ok || strings.ContainsAny(body, "{}") || strings.Count(body, `"`) > 2 {
		return "", "", false
	}
	return head, body, true
}
