package agent

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A request to an API server that is down waits for it (instead of failing
// and sending the informer into a backoff of up to a minute), replays its
// body, and gives up when its context ends.
func TestRedialingWaitsForTheAPIServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: connections are refused
	client := &http.Client{Transport: redialing{next: http.DefaultTransport, interval: 20 * time.Millisecond}}

	go func() {
		time.Sleep(200 * time.Millisecond)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			_, _ = w.Write(append([]byte("got "), b...))
		})}
		t.Cleanup(func() { srv.Close() })
		_ = srv.Serve(ln)
	}()
	start := time.Now()
	resp, err := client.Post("http://"+addr+"/events", "text/plain", strings.NewReader("event"))
	if err != nil {
		t.Fatalf("the request failed instead of waiting: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "got event" {
		t.Fatalf("body %q, want the replayed request's", b)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("answered after %s, before the server started", d)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:1/", nil)
	if _, err := client.Do(req); err == nil {
		t.Fatal("a request to a port nothing listens on succeeded")
	}
}
