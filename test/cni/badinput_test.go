package cni_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/flatnet-io/flatnet/internal/cni"
)

// Every kind of bad input gets a CNI error with the spec's code on stdout,
// and leaves no interface or IPAM record behind.
func TestBadInput(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	p := n.Pod("a")
	good := func(mod string) string {
		return fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "fntest", "type": "flatnet-cni", "bridge": "fn0", %s "ipam": {"ranges": [[{"subnet": "10.99.0.0/24"}]], "dataDir": %q}}`, mod, n.DataDir)
	}
	env := func(drop string, override ...string) map[string]string {
		e := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad", "CNI_NETNS": p.NetNS, "CNI_IFNAME": "eth0", "CNI_PATH": suite.PluginDir}
		delete(e, drop)
		for i := 0; i+1 < len(override); i += 2 {
			e[override[i]] = override[i+1]
		}
		return e
	}
	for _, tc := range []struct {
		name  string
		env   map[string]string
		stdin string
		code  uint
		msg   string
	}{
		{"malformed JSON", env(""), `{"cniVersion": "1.1.0", "name": `, types.ErrDecodingFailure, ""},
		{"bad CIDR", env(""), strings.Replace(good(""), "10.99.0.0/24", "10.99.0.0/40", 1), types.ErrInvalidNetworkConfig, "not a valid CIDR"},
		{"gateway outside subnet", env(""), strings.Replace(good(""), `"10.99.0.0/24"`, `"10.99.0.0/24", "gateway": "10.98.0.1"`, 1), types.ErrInvalidNetworkConfig, "outside subnet"},
		{"missing CNI_CONTAINERID", env("CNI_CONTAINERID"), good(""), types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID"},
		{"missing CNI_IFNAME", env("CNI_IFNAME"), good(""), types.ErrInvalidEnvironmentVariables, "CNI_IFNAME"},
		{"netns does not exist", env("", "CNI_NETNS", "/run/netns/"+suite.Prefix+"nope"), good(""), types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"unsupported version", env(""), strings.Replace(good(""), `"1.1.0"`, `"0.2.0"`, 1), types.ErrIncompatibleCNIVersion, ""},
		{"unknown future version", env(""), strings.Replace(good(""), `"1.1.0"`, `"9.0.0"`, 1), types.ErrIncompatibleCNIVersion, ""},
		{"foreign ipam type", env(""), strings.Replace(good(""), `"ipam": {`, `"ipam": {"type": "dhcp", `, 1), types.ErrUnsupportedField, "ipam.type"},
		{"interface name too long", env("", "CNI_IFNAME", "eth0-much-too-long"), good(""), types.ErrInvalidEnvironmentVariables, "interface name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := n.execPlugin(t, tc.env, tc.stdin)
			if err == nil {
				t.Fatalf("plugin succeeded: %s", out)
			}
			var e types.Error
			if jerr := json.Unmarshal(out, &e); jerr != nil {
				t.Fatalf("stdout is not a CNI error: %q", out)
			}
			if e.Code != tc.code || !strings.Contains(e.Msg+" "+e.Details, tc.msg) {
				t.Fatalf("got code %d %q (%s), want %d containing %q", e.Code, e.Msg, e.Details, tc.code, tc.msg)
			}
			n.AssertClean()
		})
	}

	t.Run("range exhausted", func(t *testing.T) {
		tiny := strings.Replace(good(""), "10.99.0.0/24", "10.99.0.0/30", 1) // one usable address
		ok := env("", "CNI_CONTAINERID", "first")
		if out, err := n.execPlugin(t, ok, tiny); err != nil {
			t.Fatalf("first ADD: %v %s", err, out)
		}
		second := n.Pod("b")
		out, err := n.execPlugin(t, env("", "CNI_CONTAINERID", "second", "CNI_NETNS", second.NetNS), tiny)
		var e types.Error
		if err == nil || json.Unmarshal(out, &e) != nil || e.Code < 100 || !strings.Contains(e.Msg, "10.99.0.0/30") {
			t.Fatalf("exhausted ADD: err %v, out %s", err, out)
		}
		if e.Code != cni.ErrRangeExhausted {
			t.Fatalf("exhausted ADD code %d, want %d", e.Code, cni.ErrRangeExhausted)
		}
		del := env("", "CNI_COMMAND", "DEL", "CNI_CONTAINERID", "first")
		if out, err := n.execPlugin(t, del, tiny); err != nil {
			t.Fatalf("DEL: %v %s", err, out)
		}
		n.AssertClean()
	})
}

func TestStatus(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	if err := n.RT.Status(context.Background()); err != nil {
		t.Fatalf("STATUS on a usable store: %v", err)
	}
	// A data directory that cannot be created makes the plugin unavailable.
	blocker := filepath.Join(n.Dir, "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "fntest", "type": "flatnet-cni", "ipam": {"ranges": [[{"subnet": "10.99.0.0/24"}]], "dataDir": %q}}`, blocker+"/ipam")
	out, err := n.execPlugin(t, map[string]string{"CNI_COMMAND": "STATUS", "CNI_PATH": suite.PluginDir}, conf)
	var e types.Error
	if err == nil || json.Unmarshal(out, &e) != nil || e.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS with an unusable store: err %v, out %s", err, out)
	}
	bad := strings.Replace(conf, "10.99.0.0/24", "nonsense", 1)
	out, err = n.execPlugin(t, map[string]string{"CNI_COMMAND": "STATUS", "CNI_PATH": suite.PluginDir}, bad)
	if err == nil || json.Unmarshal(out, &e) != nil || e.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS with an invalid configuration: err %v, out %s", err, out)
	}
	// VERSION lists every supported version.
	out, err = n.execPlugin(t, map[string]string{"CNI_COMMAND": "VERSION"}, `{"cniVersion": "1.1.0"}`)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &v); err != nil || strings.Join(v.SupportedVersions, ",") != "0.3.0,0.3.1,0.4.0,1.0.0,1.1.0" {
		t.Fatalf("VERSION: %s", out)
	}
}

// A damaged IPAM store: ADD fails with code 5 and a message naming the file,
// STATUS answers 50, and nothing is attached; once the file is repaired the
// plugin works again.
func TestCorruptStoreIsReported(t *testing.T) {
	n := newNode(t, "1.1.0", flatnetConf)
	a, b := n.Pod("a"), n.Pod("b")
	n.Add(a) // generation 1, in state.0
	slot := filepath.Join(n.DataDir, "fntest", "state.0")
	good, err := os.ReadFile(slot)
	if err != nil {
		t.Fatal(err)
	}
	bad := slices.Clone(good)
	bad[len(bad)-3] ^= 1 // one bit of the claim's owner
	if err := os.WriteFile(slot, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = n.RT.Add(context.Background(), b)
	if e := cniError(t, err); e.Code != types.ErrIOFailure || !strings.Contains(e.Msg, slot) {
		t.Fatalf("ADD with a corrupt store: code %d %q, want %d naming %s", e.Code, e.Msg, types.ErrIOFailure, slot)
	}
	if e := cniError(t, n.RT.Status(context.Background())); e.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS with a corrupt store: code %d %q", e.Code, e.Msg)
	}
	if v := n.PluginVeths(); len(v) != 1 {
		t.Fatalf("host veths after the refused ADD: %v", v)
	}
	if err := os.WriteFile(slot, good, 0o600); err != nil {
		t.Fatal(err)
	}
	n.Del(b)
	n.Del(a)
	n.AssertClean()
}
