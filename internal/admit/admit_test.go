package admit

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func serve(t *testing.T, h Handler) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the server answers root peers only")
	}
	socket := filepath.Join(t.TempDir(), "run", "policy.sock")
	ln, err := Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Serve(ctx, ln, h, quiet); close(done) }()
	t.Cleanup(func() { cancel(); ln.Close(); <-done })
	return socket
}

// A request reaches the handler whole; its answer (admitted, refused)
// reaches the plugin; the socket file is root's alone.
func TestAskAndAnswer(t *testing.T) {
	var got Request
	socket := serve(t, func(_ context.Context, r Request) error {
		got = r
		if r.Name == "other" {
			return errors.New("pod x/other is not on this node")
		}
		return nil
	})
	req := Request{Op: Add, Namespace: "x", Name: "a", UID: "u1", ContainerID: "c1", IfName: "eth0", HostVeth: "fn0123",
		IPs: []netip.Addr{netip.MustParseAddr("10.244.0.5"), netip.MustParseAddr("fd00:244::5")}}
	if err := Ask(context.Background(), socket, req); err != nil {
		t.Fatal(err)
	}
	if got.Name != "a" || got.HostVeth != "fn0123" || len(got.IPs) != 2 || got.IPs[1] != req.IPs[1] {
		t.Errorf("the handler got %+v", got)
	}
	req.Name = "other"
	var refused *RefusedError
	if err := Ask(context.Background(), socket, req); !errors.As(err, &refused) || !strings.Contains(err.Error(), "not on this node") {
		t.Errorf("a refusal: %v", err)
	}
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket file %v %v, want mode 0600", fi.Mode(), err)
	}
}

// An agent that does not answer in time, or is not there, is an error
// (the plugin then fails closed), not a wait without end.
func TestAskTimesOut(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	socket := serve(t, func(ctx context.Context, _ Request) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := Ask(ctx, socket, Request{Op: Add})
	if err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("a silent agent: %v after %s", err, time.Since(start))
	}
	var refused *RefusedError
	if errors.As(err, &refused) {
		t.Errorf("a timeout reads as a refusal: %v", err)
	}
	if err := Ask(context.Background(), filepath.Join(t.TempDir(), "none.sock"), Request{Op: Add}); err == nil {
		t.Error("no agent at all: no error")
	}
}
