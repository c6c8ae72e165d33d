package agent

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunInstallsConflistAndTurnsHealthy(t *testing.T) {
	o := Defaults()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	o.AddFlags(fs)
	dir := t.TempDir()
	if err := fs.Parse([]string{"--pod-cidr", "10.244.3.0/24", "--cni-conf-dir", dir, "--health-addr", "127.0.0.1:0"}); err != nil {
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

func TestValidateNeedsPodCIDR(t *testing.T) {
	if err := Defaults().Validate(); err == nil || !strings.Contains(err.Error(), "--pod-cidr") {
		t.Fatalf("got %v", err)
	}
}

func TestHealthzReflectsState(t *testing.T) {
	var healthy atomic.Bool
	h := healthHandler(&healthy)
	get := func() int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		return rec.Code
	}
	if code := get(); code != http.StatusServiceUnavailable {
		t.Fatalf("before install: %d", code)
	}
	healthy.Store(true)
	if code := get(); code != http.StatusOK {
		t.Fatalf("after install: %d", code)
	}
}
