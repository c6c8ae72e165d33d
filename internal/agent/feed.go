package agent

import (
	"sync"
	"sync/atomic"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// feed is the store a reflector fills with the Services or the
// EndpointSlices of the cluster. It keeps no object: each one goes to the
// proxiers, which keep only what they program of it. An informer would
// keep every object besides, for no reader: its cache was most of
// flatnetd's memory (at 10,000 Services, 23 of 43 MiB of live heap, with
// the objects trimmed to what the proxier reads).
//
// What it keeps of each object is what an informer's cache gives its
// handlers: the resourceVersion, so that an object a relist hands over
// unchanged is not handed on (an informer calls that a resync, and
// flatnetd's handlers asked for none), and the little a deletion needs
// (tombstone), so that objects a relist no longer has are deleted.
type feed struct {
	transform cache.TransformFunc
	update    func(obj any)
	remove    func(obj any)
	// entry is what the feed keeps of an object; tombstone makes an object
	// from it for remove.
	entry     func(obj any) (types.NamespacedName, feedEntry)
	tombstone func(types.NamespacedName, feedEntry) any

	mu      sync.Mutex
	entries map[types.NamespacedName]feedEntry
	synced  atomic.Bool // the first list was fed
}

// feedEntry is what a feed keeps of an object: its resourceVersion and
// the fields its tombstone needs.
type feedEntry struct {
	version string
	owner   string // an EndpointSlice's Service (its label)
	owned   bool   // it has the label
	family  string // an EndpointSlice's address type
}

var _ cache.TransformingStore = (*feed)(nil)

// Add feeds a new object.
func (f *feed) Add(obj any) error { return f.Update(obj) }

// Update feeds a changed object.
func (f *feed) Update(obj any) error {
	key, e := f.entry(obj)
	f.mu.Lock()
	old, known := f.entries[key]
	f.entries[key] = e
	f.mu.Unlock()
	if !known || old.version != e.version {
		f.update(obj)
	}
	return nil
}

// Delete feeds a deleted object.
func (f *feed) Delete(obj any) error {
	key, _ := f.entry(obj)
	f.mu.Lock()
	delete(f.entries, key)
	f.mu.Unlock()
	f.remove(obj)
	return nil
}

// Replace feeds a list of every object: the changed and new ones are
// updated, those missing deleted.
func (f *feed) Replace(list []any, _ string) error {
	listed := make(map[types.NamespacedName]bool, len(list))
	for _, obj := range list {
		key, _ := f.entry(obj)
		listed[key] = true
		_ = f.Update(obj)
	}
	f.mu.Lock()
	var gone []any
	for key, e := range f.entries {
		if !listed[key] {
			delete(f.entries, key)
			gone = append(gone, f.tombstone(key, e))
		}
	}
	f.mu.Unlock()
	for _, obj := range gone {
		f.remove(obj)
	}
	f.synced.Store(true)
	return nil
}

// Resync does nothing: the proxiers resync on their own.
func (f *feed) Resync() error { return nil }

// Transformer trims the objects of the reflector's first list, which it
// holds until the list is complete.
func (f *feed) Transformer() cache.TransformFunc { return f.transform }

// HasSynced reports whether the first list was fed.
func (f *feed) HasSynced() bool { return f.synced.Load() }

// objectKey is an object's namespace and name.
func objectKey(obj any) types.NamespacedName {
	m, err := meta.Accessor(obj)
	if err != nil {
		return types.NamespacedName{}
	}
	return types.NamespacedName{Namespace: m.GetNamespace(), Name: m.GetName()}
}

// objectVersion is an object's resourceVersion.
func objectVersion(obj any) string {
	m, err := meta.Accessor(obj)
	if err != nil {
		return ""
	}
	return m.GetResourceVersion()
}
