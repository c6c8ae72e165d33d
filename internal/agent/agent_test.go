package agent

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
}

func TestHealthAndReadiness(t *testing.T) {
	a := &Agent{o: Defaults(), metrics: newMetrics()}
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
	failed := errors.New("boom")
	a.lastErr.Store(&failed)
	if get("/healthz") != http.StatusServiceUnavailable || get("/readyz") != http.StatusOK {
		t.Fatalf("after a failed sync: healthz %d readyz %d", get("/healthz"), get("/readyz"))
	}
}
