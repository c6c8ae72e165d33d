package policy_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/policy"
)

// The anti-spoofing table holds each attachment's port and its addresses
// per family, follows the record as it changes, is written whole in one
// transaction first, and again when it is deleted behind the guard's back.
func TestGuardFollowsTheAttachments(t *testing.T) {
	ctx := context.Background()
	att := policy.NewAttachments()
	att.Admit(policy.Attachment{HostVeth: "fnaaaa", UID: "u1", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("fd00:244:1::7")}})
	rec := &recorder{Fake: nft.NewFake(nft.Bridge, policy.GuardTable)}
	g := policy.NewGuard(rec, att, quiet)
	if err := g.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if rec.runs != 1 || rec.last.ElementsOnly() {
		t.Errorf("first sync: %d transactions", rec.runs)
	}
	check := func(what string, ports, v4, v6 []string) {
		t.Helper()
		for set, want := range map[string][]string{"ports": ports, "sources-v4": v4, "sources-v6": v6} {
			if got := rec.Fake.Keys(set, false); !slices.Equal(got, want) {
				t.Errorf("%s: %s holds %v, want %v", what, set, got, want)
			}
		}
	}
	check("one pod", []string{"fnaaaa"}, []string{"fnaaaa . 10.244.1.7"}, []string{"fnaaaa . fd00:244:1::7"})
	att.Admit(policy.Attachment{HostVeth: "fnbbbb", UID: "u2", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.8")}})
	att.Release("fnaaaa")
	if err := g.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if !rec.last.ElementsOnly() {
		t.Error("a change of the record wrote more than elements")
	}
	check("one pod replaced", []string{"fnbbbb"}, []string{"fnbbbb . 10.244.1.8"}, nil)
	tx := rec.NewTx()
	tx.Delete(&knftables.Table{})
	if err := rec.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if err := g.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	check("after the table was deleted", []string{"fnbbbb"}, []string{"fnbbbb . 10.244.1.8"}, nil)
	if c := rec.Table.Chains["from-pod"]; c == nil || len(c.Rules) == 0 {
		t.Error("the table was not written again")
	}
}
