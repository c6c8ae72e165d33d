package workload

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// TestServe: each connection reaches the handler; the end of ctx closes the
// listener and Serve returns nil; a listener closed by someone else is an
// error.
func TestServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ln, func(c net.Conn) { _, _ = io.WriteString(c, "hi"); c.Close() })
	}()
	for range 2 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if b, err := io.ReadAll(c); err != nil || string(b) != "hi" {
			t.Fatalf("read %q, %v", b, err)
		}
		c.Close()
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after the context ended: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still runs after the context ended")
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("the listener still accepts")
	}

	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- Serve(context.Background(), ln2, func(c net.Conn) { c.Close() }) }()
	ln2.Close()
	if err := <-done; err == nil {
		t.Error("Serve on a listener closed under it returned nil")
	}
}
