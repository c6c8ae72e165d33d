package agent

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/proxy"
)

func TestRunInstallsConflistAndTurnsHealthy(t *testing.T) {
	o := Defaults()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	o.AddFlags(fs)
	dir := t.TempDir()
	if err := fs.Parse([]string{"--pod-cidr", "10.244.3.0/24", "--cni-conf-dir", dir, "--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	path := filepath.Join(dir, "10-flatnet.conflist")
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && strings.Contains(string(b), `"subnet": "10.244.3.0/24"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("conflist not installed: %v %s", err, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	err := Defaults().Validate()
	if err == nil || !strings.Contains(err.Error(), "--node-name") || !strings.Contains(err.Error(), "--cluster-cidr") {
		t.Fatalf("got %v", err)
	}
	for addr, ok := range map[string]bool{"127.0.0.1:6060": true, "[::1]:6060": true, ":6060": false, "0.0.0.0:6060": false, "10.0.0.1:6060": false} {
		o := Defaults()
		o.PodCIDRs, o.PprofAddr = []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}, addr
		if err := o.Validate(); (err == nil) != ok {
			t.Errorf("--debug-pprof-addr %s: got %v", addr, err)
		}
	}
}

// failingNFT is an nftables whose transactions the kernel refuses.
type failingNFT struct{ nft.Tables }

func (failingNFT) Run(context.Context, *nft.Tx) error { return errors.New("refused") }

type noConntrack struct{}

func (noConntrack) Delete([]proxy.Flow) error { return nil }

// Liveness follows the sync loops' progress, not their errors: a node
// sync that fails keeps the agent live (a restart would not fix a refused
// route); a Service change that waits too long for a successful proxy sync
// does not. Readiness: conflist installed and every proxy synced once.
func TestHealthAndReadiness(t *testing.T) {
	a := &Agent{o: Defaults(), metrics: newMetrics()}
	a.o.HealthTimeout = 50 * time.Millisecond
	h := a.healthHandler()
	get := func(path string) int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code
	}
	if get("/healthz") != http.StatusOK || get("/readyz") != http.StatusServiceUnavailable {
		t.Fatalf("before install: healthz %d readyz %d", get("/healthz"), get("/readyz"))
	}
	a.installed.Store(true)
	failed := errors.New("route 10.244.2.0/24 via 172.30.0.13: network is unreachable")
	a.lastErr.Store(&failed)
	if get("/healthz") != http.StatusOK || get("/readyz") != http.StatusOK {
		t.Fatalf("after a failed node sync: healthz %d readyz %d, want 200 200", get("/healthz"), get("/readyz"))
	}

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}}}
	stuck := proxy.New(proxy.Config{NodeName: "n"}, failingNFT{nft.NewFake(nft.IPv4, proxy.Table)}, noConntrack{}, log)
	a.proxiers = []*proxy.Proxier{stuck}
	if get("/readyz") != http.StatusServiceUnavailable {
		t.Fatal("ready before the proxy synced once")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go stuck.Run(ctx)
	stuck.UpdateService(svc)
	time.Sleep(100 * time.Millisecond)
	if get("/healthz") != http.StatusServiceUnavailable {
		t.Fatal("live while every proxy sync has failed for twice the health timeout")
	}

	ok := proxy.New(proxy.Config{NodeName: "n"}, nft.NewFake(nft.IPv4, proxy.Table), noConntrack{}, log)
	a.proxiers = []*proxy.Proxier{ok}
	go ok.Run(ctx)
	ok.UpdateService(svc)
	deadline := time.Now().Add(5 * time.Second)
	for get("/healthz") != http.StatusOK || get("/readyz") != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("a syncing proxy: healthz %d readyz %d", get("/healthz"), get("/readyz"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Node updates that change nothing flatnetd programs (heartbeats,
// conditions) do not start a sync.
func TestNodeChanged(t *testing.T) {
	base := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{corev1.LabelTopologyZone: "a"}},
		Spec:   corev1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "172.30.0.11"}}}}
	heartbeat := base.DeepCopy()
	heartbeat.ResourceVersion = "2"
	heartbeat.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
	if nodeChanged(base, heartbeat) {
		t.Error("a heartbeat counts as a change")
	}
	for name, mod := range map[string]func(*corev1.Node){
		"pod CIDR": func(n *corev1.Node) { n.Spec.PodCIDRs = []string{"10.244.9.0/24"} },
		"address":  func(n *corev1.Node) { n.Status.Addresses[0].Address = "172.30.0.99" },
		"zone":     func(n *corev1.Node) { n.Labels[corev1.LabelTopologyZone] = "b" },
	} {
		n := base.DeepCopy()
		mod(n)
		if !nodeChanged(base, n) {
			t.Errorf("a new %s is not a change", name)
		}
	}
}
