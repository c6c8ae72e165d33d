package agent

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"

	"github.com/flatnet-io/flatnet/internal/proxy"
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

// Events about a Service (slim, as the informer keeps it) reach the API
// server as client-go's clientset sends them: POSTed to the Service's
// namespace, in protobuf, naming the Service with its kind, version and UID.
func TestEventsReachTheAPIServer(t *testing.T) {
	got := make(chan *corev1.Event, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/namespaces/ns/events" || r.Header.Get("Content-Type") != runtime.ContentTypeProtobuf {
			t.Errorf("%s %s (%s), want a protobuf POST to /api/v1/namespaces/ns/events", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		}
		obj, _, err := serializer.NewCodecFactory(apiScheme).UniversalDeserializer().Decode(body, nil, nil)
		if e, ok := obj.(*corev1.Event); ok {
			got <- e
		} else {
			t.Errorf("body %T %v", obj, err)
		}
		w.Header().Set("Content-Type", runtime.ContentTypeJSON)
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"kind":"Event","apiVersion":"v1","metadata":{"name":"e","namespace":"ns"}}`))
	}))
	defer srv.Close()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: "+srv.URL+"}}]\n"+
		"contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\nusers: [{name: u, user: {}}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	client, err := newClient(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sink := newEventSink(ctx, client, "node-1")
	defer sink.shutdown()
	full := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: "uid-1", ResourceVersion: "7",
		Annotations: map[string]string{"a": "b"}}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10"}}
	slim, _ := proxy.SlimService(full)
	sink.Eventf(slim.(*corev1.Service), corev1.EventTypeWarning, "AddressConflict", "not programmed: %s", "x")
	select {
	case e := <-got:
		ref := e.InvolvedObject
		if ref.Kind != "Service" || ref.APIVersion != "v1" || ref.Namespace != "ns" || ref.Name != "web" || ref.UID != "uid-1" ||
			e.Reason != "AddressConflict" || e.Source.Component != "flatnetd" || e.Source.Host != "node-1" {
			t.Errorf("event %+v", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no Event reached the API server")
	}
}
