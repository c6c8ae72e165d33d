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

// TestServePackets: a datagram gets what reply makes of it, or nothing when
// reply says so; the end of ctx closes the socket and ServePackets returns
// nil.
func TestServePackets(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- ServePackets(ctx, pc, func(msg []byte, _ net.Addr) ([]byte, bool) {
			return append([]byte("re: "), msg...), string(msg) != "quiet"
		})
	}()
	c, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	for _, msg := range []string{"quiet", "hello"} { // the answer is hello's
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "re: hello" {
		t.Fatalf("answer %q, %v; want %q", buf[:n], err, "re: hello")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ServePackets after the context ended: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServePackets still runs after the context ended")
	}
}
