package nft

import (
	"context"
	"slices"
	"strings"
	"sync"

	"sigs.k8s.io/knftables"
)

// Verb is what a transaction does to an object.
type Verb uint8

const (
	// Add creates the object, or leaves it as it is when it exists (nft's
	// "add"); an element whose key is in the map with another value is
	// refused (EEXIST).
	Add Verb = iota
	// Delete removes the object; a missing one is refused (ENOENT).
	Delete
	// Flush empties a chain of its rules or a set of its elements.
	Flush
)

func (v Verb) String() string { return [...]string{"add", "delete", "flush"}[v] }

// Op is one operation of a transaction: a verb and a typed object
// (knftables.Table, Chain, Rule, Set, Map or Element).
type Op struct {
	Verb Verb
	Obj  knftables.Object
}

// Tx is one transaction: operations in order, committed atomically by
// Tables.Run (the kernel applies all of them or none).
type Tx struct {
	ops []Op
	// fake is the same transaction for knftables' Fake, which tests use
	// to read the ruleset an engine writes.
	fake *knftables.Transaction
}

// Add adds obj (see Verb).
func (t *Tx) Add(obj knftables.Object) { t.op(Add, obj) }

// Delete deletes obj.
func (t *Tx) Delete(obj knftables.Object) { t.op(Delete, obj) }

// Flush empties a chain, set or map.
func (t *Tx) Flush(obj knftables.Object) { t.op(Flush, obj) }

func (t *Tx) op(v Verb, obj knftables.Object) {
	t.ops = append(t.ops, Op{v, obj})
	if t.fake == nil {
		return
	}
	switch v {
	case Add:
		t.fake.Add(obj)
	case Delete:
		t.fake.Delete(obj)
	case Flush:
		t.fake.Flush(obj)
	}
}

// Ops are the transaction's operations, in order.
func (t *Tx) Ops() []Op { return t.ops }

// Len is the number of operations.
func (t *Tx) Len() int { return len(t.ops) }

// ElementsOnly reports whether the transaction only adds and deletes
// elements (a Service's endpoints changing, say).
func (t *Tx) ElementsOnly() bool {
	for _, op := range t.ops {
		if _, ok := op.Obj.(*knftables.Element); !ok || op.Verb == Flush {
			return false
		}
	}
	return true
}

// Tables is one engine's table in one family: transactions and the
// listings the engines check the kernel with. New's talks netlink to the
// kernel; Fake's keeps the table in memory, for unit tests.
type Tables interface {
	NewTx() *Tx
	// Run commits tx in one atomic transaction. A refusal is an *Error
	// (IsNotFound, IsAlreadyExists) naming the refused operation.
	Run(ctx context.Context, tx *Tx) error
	// List lists the names of the table's objects of a type ("chains",
	// "sets", "maps"), none when the table does not exist.
	List(ctx context.Context, objectType string) ([]string, error)
	// ListRules lists the rules of a chain, with their handles but not
	// their text; none when the chain does not exist.
	ListRules(ctx context.Context, chain string) ([]*knftables.Rule, error)
	// ListElements lists the elements of a set or map (objectType "set"
	// or "map") with their keys, values and comments, as nft writes them;
	// none when it does not exist. Sets of intervals and verdict maps are
	// not read.
	ListElements(ctx context.Context, objectType, name string) ([]*knftables.Element, error)
	// ListCounters lists the table's named counters with their values;
	// none when the table does not exist.
	ListCounters(ctx context.Context) ([]*knftables.Counter, error)
}

// Fake is Tables over knftables' Fake: the table in memory, for unit
// tests (Dump, Table). It accepts what the kernel refuses (a second value
// for a map key, deleting a missing element), so whatever can fail in the
// kernel is tested against New's.
type Fake struct {
	*knftables.Fake
	mu sync.Mutex // Run and Keys: a test reads while an engine's runner writes
}

// NewFake returns an empty Fake of table in family fam.
func NewFake(fam Family, table string) *Fake { return &Fake{Fake: knftables.NewFake(fam.NFT(), table)} }

// Keys lists the keys of a set's elements, fields joined by " . ", sorted;
// with comments, each followed by " # " and its comment.
func (f *Fake) Keys(set string, comments bool) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	if f.Table == nil || f.Table.Sets[set] == nil {
		return nil
	}
	for _, e := range f.Table.Sets[set].Elements {
		k := strings.Join(e.Key, " . ")
		if comments && e.Comment != nil {
			k += " # " + *e.Comment
		}
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// NewTx implements Tables.
func (f *Fake) NewTx() *Tx { return &Tx{fake: f.Fake.NewTransaction()} }

// Run implements Tables.
func (f *Fake) Run(ctx context.Context, tx *Tx) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if tx.fake == nil {
		tx.fake = f.Fake.NewTransaction()
		for _, op := range tx.ops {
			(&Tx{fake: tx.fake}).op(op.Verb, op.Obj)
		}
	}
	return f.Fake.Run(ctx, tx.fake)
}

// ListElements implements Tables: none when the set does not exist, as the
// kernel's.
func (f *Fake) ListElements(ctx context.Context, objectType, name string) ([]*knftables.Element, error) {
	els, err := f.Fake.ListElements(ctx, objectType, name)
	if knftables.IsNotFound(err) {
		return nil, nil
	}
	return els, err
}

// ListCounters implements Tables: none when the table does not exist, as
// the kernel's. (knftables' own panics without a table and lists a nil
// for each counter.)
func (f *Fake) ListCounters(context.Context) ([]*knftables.Counter, error) {
	if f.Table == nil {
		return nil, nil
	}
	out := make([]*knftables.Counter, 0, len(f.Table.Counters))
	for _, c := range f.Table.Counters {
		out = append(out, knftables.PtrTo(c.Counter))
	}
	return out, nil
}
