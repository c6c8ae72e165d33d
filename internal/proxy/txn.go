package proxy

import (
	"context"
	"strings"

	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// txn is one sync's transaction as knftables renders it for nft and, as
// long as it changes nothing but elements of sets and maps that exist,
// also as element operations that package nft writes over netlink without
// starting nft (ElementWriter). A partial sync after an endpoint change is
// such a transaction: a Service is map elements (balance.go).
type txn struct {
	*knftables.Transaction
	ops        []nft.ElementOp
	structural bool // something other than an element is added, flushed or deleted
}

func newTxn(tables knftables.Interface) *txn { return &txn{Transaction: tables.NewTransaction()} }

func (t *txn) Add(obj knftables.Object) {
	t.note(obj, false)
	t.Transaction.Add(obj)
}

func (t *txn) Delete(obj knftables.Object) {
	t.note(obj, true)
	t.Transaction.Delete(obj)
}

func (t *txn) Flush(obj knftables.Object) {
	t.structural = true
	t.Transaction.Flush(obj)
}

func (t *txn) note(obj knftables.Object, del bool) {
	e, ok := obj.(*knftables.Element)
	if !ok {
		t.structural = true
		return
	}
	op := nft.ElementOp{Delete: del, Set: e.Set + e.Map, Key: e.Key, Value: e.Value}
	if e.Comment != nil {
		op.Comment = *e.Comment
	}
	t.ops = append(t.ops, op)
}

// maxNetlinkOps bounds the element changes sent over netlink in one batch;
// larger transactions go to nft, which sends its own batches.
const maxNetlinkOps = 1000

// run commits the transaction: over netlink when it is elements only and
// the interface can (nft.New's), through nft otherwise (and with the Fake).
// Either way it is one atomic transaction. It returns the kind of sync for
// the metric: "partial" through nft, "elements" over netlink.
func (t *txn) run(ctx context.Context, tables knftables.Interface, fam Family) (string, error) {
	if w, ok := tables.(nft.ElementWriter); ok && !t.structural && len(t.ops) <= maxNetlinkOps {
		types := map[string]string{}
		for _, op := range t.ops {
			types[op.Set] = setType(fam, op.Set)
		}
		return "elements", w.RunElements(ctx, types, t.ops)
	}
	return "partial", tables.Run(ctx, t.Transaction)
}

// setType is the nft type of the proxy's set or map name, known from the
// name alone: the fixed ones, and the endpoint maps of balance.go; "" for
// the affinity sets, whose elements only packets add.
func setType(fam Family, name string) string {
	addr := fam.AddrType()
	switch {
	case name == serviceIPsMap || name == noEndpointsMap:
		return addr + " . inet_proto . inet_service : verdict"
	case name == serviceNodePortsMap || name == noEndpointNodePorts:
		return "inet_proto . inet_service : verdict"
	case name == clusterIPsSet:
		return addr
	case name == hairpinSet:
		return addr + " . " + addr
	case strings.HasPrefix(name, nodePortEndpointsMap+"-"):
		return "inet_proto . inet_service : " + addr + " . inet_service"
	case strings.HasPrefix(name, endpointsMap+"-"):
		return addr + " . inet_proto . inet_service : " + addr + " . inet_service"
	}
	return ""
}
