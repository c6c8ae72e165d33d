package cniconf

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/flatnet-io/flatnet/internal/cni"
)

func TestRenderIsAValidConflistForThePlugin(t *testing.T) {
	data, err := Render(Options{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")}, Portmap: true, MTU: 1450})
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("libcni rejects the conflist: %v\n%s", err, data)
	}
	if list.Name != "flatnet" || len(list.Plugins) != 2 || list.Plugins[1].Network.Type != "portmap" {
		t.Fatalf("conflist: %s", data)
	}
	// The plugin's own parser accepts its entry (with the list's name and version injected, as libcni does).
	entry, err := libcni.InjectConf(list.Plugins[0], map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := cni.ParseConfig(entry.Bytes)
	if err != nil {
		t.Fatalf("flatnet-cni rejects its entry: %v", err)
	}
	if len(cfg.IPAM.Sets) != 2 || cfg.MTU != 1450 || cfg.IPAM.Sets[1][0].Gateway.String() != "fd00:244:1::1" {
		t.Fatalf("parsed: %+v", cfg)
	}
	if cfg.Admission != nil {
		t.Fatalf("admission without PolicySocket: %+v", cfg.Admission)
	}
	if _, err := Render(Options{}); err == nil {
		t.Fatal("rendered a conflist without a pod CIDR")
	}
}

func TestInstallIsAtomicAndIdempotent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net.d")
	changed, err := Install(dir, "10-flatnet.conflist", []byte("one"))
	if err != nil || !changed {
		t.Fatalf("first install: %v %v", changed, err)
	}
	if changed, err = Install(dir, "10-flatnet.conflist", []byte("one")); err != nil || changed {
		t.Fatalf("same content: changed=%v err=%v", changed, err)
	}
	if changed, err = Install(dir, "10-flatnet.conflist", []byte("two")); err != nil || !changed {
		t.Fatalf("new content: changed=%v err=%v", changed, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "10-flatnet.conflist")); string(b) != "two" {
		t.Fatalf("content %q", b)
	}
}

// The documented example conflist stays valid for libcni and the plugin.
func TestExampleConflistInDeploy(t *testing.T) {
	data, err := os.ReadFile("../../deploy/cni/10-flatnet.conflist")
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := libcni.InjectConf(list.Plugins[0], map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := cni.ParseConfig(entry.Bytes)
	if err != nil {
		t.Fatalf("flatnet-cni rejects the example: %v", err)
	}
	if len(cfg.IPAM.Sets) != 2 || len(cfg.Routes) != 2 || cfg.IPAM.Reserved[0].String() != "10.244.1.53" {
		t.Fatalf("parsed example: %+v", cfg)
	}
}

// With a policy socket the plugin's entry asks flatnetd there, failing
// closed.
func TestRenderPolicyAdmission(t *testing.T) {
	data, err := Render(Options{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, PolicySocket: "@flatnet-policy"})
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := libcni.InjectConf(list.Plugins[0], map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := cni.ParseConfig(entry.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if a := cfg.Admission; a == nil || a.Socket != "@flatnet-policy" || a.FailOpen {
		t.Fatalf("admission %+v from\n%s", a, data)
	}
}
