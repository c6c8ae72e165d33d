package egress

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/flatnet-io/flatnet/internal/netnstest"
)

// Against the kernel, in a throwaway namespace: the table is written, read
// back as present over netlink, and seen missing after `nft flush ruleset`.
func TestPresentInTheKernel(t *testing.T) {
	ctx := context.Background()
	netnstest.Run(t, "egress", func() error {
		m, err := New(netip.MustParsePrefix("10.244.0.0/16"))
		if err != nil {
			return err
		}
		if err := m.Sync(ctx, netip.MustParsePrefix("10.244.0.0/16"), []netip.Addr{netip.MustParseAddr("172.30.0.11"), netip.MustParseAddr("172.30.0.12")}); err != nil {
			return err
		}
		if ok, err := m.Present(ctx); err != nil || !ok {
			return fmt.Errorf("after a sync: present %v, %v", ok, err)
		}
		out, err := exec.Command("nft", "list", "table", "ip", Table).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "172.30.0.11, 172.30.0.12") || !strings.Contains(string(out), "masquerade") {
			return fmt.Errorf("the table: %v\n%s", err, out)
		}
		if out, err := exec.Command("nft", "flush", "ruleset").CombinedOutput(); err != nil {
			return fmt.Errorf("flush: %v: %s", err, out)
		}
		if ok, err := m.Present(ctx); err != nil || ok {
			return fmt.Errorf("after a flush: present %v, %v", ok, err)
		}
		return nil
	})
}
