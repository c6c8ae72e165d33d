package cni_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/cnitest"
	"github.com/flatnet-io/flatnet/internal/podnet"
)

// faultRun is the model of what the runtime knows: an attachment is valid
// when its last ADD completed and no DEL started since. A killed ADD or a
// DEL, killed or not, leaves it invalid, so GC must release whatever it holds.
type faultRun struct {
	n     node
	pods  []cniruntime.Pod
	h     []*netlink.Handle // on each pod's namespace
	valid []bool
	addr  []string // the address of each valid attachment's completed ADD
	count map[string]int
}

// TestKillDuringAddAndDel SIGKILLs flatnet-cni 0-20 ms after it starts an
// ADD or a DEL (both take 8-30 ms on the test VM) until 200 kills have ended
// a run, then runs GC with the valid attachments, as a runtime does after a
// crash. After every run the store loads and every address set in a pod is
// claimed by that pod (so none is handed out while an interface still has
// it). After GC the claims are exactly the valid attachments', the pods'
// interfaces carry exactly those addresses, and only the valid attachments'
// veths remain. FLATNET_FAULT_SEED=<n> replays a run.
func TestKillDuringAddAndDel(t *testing.T) {
	const pods, kills = 8, 200
	n := newNode(t, "1.1.0", flatnetConf)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FLATNET_FAULT_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 0))
	r := &faultRun{n: n, valid: make([]bool, pods), addr: make([]string, pods), count: map[string]int{}}
	for i := range pods {
		r.pods = append(r.pods, n.Pod(fmt.Sprintf("k%d", i)))
		r.h = append(r.h, cnitest.HandleAt(t, r.pods[i].NetNS))
	}
	start := time.Now()
	runs := 0
	for ; r.count["ADD killed"]+r.count["DEL killed"] < kills; runs++ {
		if runs == 5*kills {
			t.Fatalf("only %v after %d runs: the kills come too late", r.count, runs)
		}
		k := rnd.IntN(pods)
		verb := "ADD"
		if r.valid[k] != (rnd.IntN(5) == 0) { // mostly alternate; one in five repeats
			verb = "DEL"
		}
		r.step(t, k, verb, time.Duration(rnd.Int64N(int64(20*time.Millisecond))))
		r.checkClaimed(t)
	}
	t.Logf("%d runs in %v: %v", runs, time.Since(start).Round(time.Millisecond), r.count)
	if r.count["ADD killed"] == 0 || r.count["DEL killed"] == 0 {
		t.Fatalf("the kills never landed inside both verbs: %v", r.count)
	}
	r.gcAndCheck(t)
}

// step runs verb for pod k, kills it after delay, and updates the model.
func (r *faultRun) step(t *testing.T, k int, verb string, delay time.Duration) {
	t.Helper()
	p := r.pods[k]
	env := map[string]string{"CNI_COMMAND": verb, "CNI_CONTAINERID": p.ID, "CNI_NETNS": p.NetNS, "CNI_IFNAME": "eth0", "CNI_PATH": suite.PluginDir}
	before := r.n.slotHeaders(t)
	out, killed, err := r.n.runKilled(pluginCmd(env, pluginStdin(r.n.DataDir)), delay)
	r.valid[k], r.addr[k] = false, ""
	switch {
	case killed:
		r.count[verb+" killed"]++
		if after := r.n.slotHeaders(t); after != before && strings.Contains(after, " intent ") {
			r.count["killed mid-save"]++
		}
	case err != nil:
		t.Fatalf("%s %s finished but failed: %v: %s", verb, p.Name, err, out)
	case verb == "ADD":
		r.count["ADD completed"]++
		var res current.Result
		if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) != 1 {
			t.Fatalf("ADD %s result: %v: %s", p.Name, err, out)
		}
		ip := res.IPs[0].Address.IP.String()
		if i := slices.Index(r.addr, ip); i >= 0 {
			t.Fatalf("ADD %s got %s, which %s holds", p.Name, ip, r.pods[i].Name)
		}
		r.valid[k], r.addr[k] = true, ip
	default:
		r.count["DEL completed"]++
	}
}

// runKilled starts cmd in the node and SIGKILLs it after delay; killed says
// whether the signal ended it (false: it finished first).
func (n node) runKilled(cmd *exec.Cmd, delay time.Duration) (out []byte, killed bool, err error) {
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := n.start(cmd); err != nil {
		return nil, false, err
	}
	timer := time.AfterFunc(delay, func() { _ = cmd.Process.Kill() })
	err = cmd.Wait()
	timer.Stop()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return stdout.Bytes(), true, nil
		}
	}
	return stdout.Bytes(), false, err
}

// slotHeaders is the first line of each IPAM state slot: a kill that
// changes them and leaves an intent header stopped a save half-way.
func (n node) slotHeaders(t *testing.T) string {
	t.Helper()
	var out string
	for _, slot := range []string{"state.0", "state.1"} {
		b, err := os.ReadFile(filepath.Join(n.DataDir, "fntest", slot))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		line, _, _ := bytes.Cut(b, []byte("\n"))
		out += string(line) + "\n"
	}
	return out
}

// gcAndCheck runs GC with the valid attachments and checks the store, the
// pods' addresses and the host veths against the model; then DELs every
// pod, as the runtime tears the sandboxes down, and checks nothing is left.
func (r *faultRun) gcAndCheck(t *testing.T) {
	var valid []types.GCAttachment
	want := map[string]string{} // owner -> address
	var wantVeths []string
	for k, p := range r.pods {
		if r.valid[k] {
			valid = append(valid, types.GCAttachment{ContainerID: p.ID, IfName: "eth0"})
			want[p.ID+":eth0"] = r.addr[k]
			wantVeths = append(wantVeths, podnet.HostVethName("fntest", p.ID, "eth0"))
		}
	}
	if err := r.n.RT.GC(context.Background(), valid); err != nil {
		t.Fatalf("GC: %v", err)
	}
	got := map[string]string{}
	for _, rec := range r.n.Records() { // the store loads
		addr, owner, _ := strings.Cut(rec, " ")
		if prev, dup := got[owner]; dup {
			t.Fatalf("%s holds %s and %s", owner, prev, addr)
		}
		got[owner] = addr
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("claims after GC %v, want exactly the valid attachments' %v", got, want)
	}
	r.checkPodAddresses(t)
	veths := r.n.PluginVeths()
	slices.Sort(veths)
	slices.Sort(wantVeths)
	if !slices.Equal(veths, wantVeths) {
		t.Fatalf("host veths after GC %v, want the valid attachments' %v", veths, wantVeths)
	}
	for _, p := range r.pods {
		r.n.Del(p)
	}
	r.n.AssertClean()
	if links, err := r.n.Handle().LinkList(); err != nil || len(links) != 2 { // lo and the bridge
		t.Fatalf("links left in the node: %d, %v", len(links), err)
	}
}

// checkClaimed: the store loads, and every address set in a pod is claimed
// by that pod. Two pods with one address, or an address released while still
// set, break it.
func (r *faultRun) checkClaimed(t *testing.T) {
	t.Helper()
	owner := map[string]string{}
	for _, rec := range r.n.Records() {
		addr, o, _ := strings.Cut(rec, " ")
		owner[addr] = o
	}
	for k, p := range r.pods {
		for _, a := range r.podAddrs(t, k) {
			if owner[a] != p.ID+":eth0" {
				t.Fatalf("pod %s has %s set, but the store gives it to %q (counts so far %v)", p.Name, a, owner[a], r.count)
			}
		}
	}
}

// checkPodAddresses: after GC, valid pods have exactly their address set,
// the others none.
func (r *faultRun) checkPodAddresses(t *testing.T) {
	t.Helper()
	for k, p := range r.pods {
		set := r.podAddrs(t, k)
		if r.valid[k] && !slices.Equal(set, []string{r.addr[k]}) || !r.valid[k] && len(set) > 0 {
			t.Fatalf("pod %s (valid %v) has addresses %v, want %q", p.Name, r.valid[k], set, r.addr[k])
		}
	}
}

// podAddrs lists the global addresses set in pod k.
func (r *faultRun) podAddrs(t *testing.T, k int) []string {
	t.Helper()
	addrs, err := r.h[k].AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if a.IP.IsGlobalUnicast() {
			out = append(out, a.IP.String())
		}
	}
	return out
}
