package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/flatnet-io/flatnet/internal/policy"
)

// `flatnet policy log` prints flatnetd's denials by pod and policy.
func TestPolicyLog(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/policy/log" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode([]policy.Denial{{Time: time.Now(), Direction: "ingress", Protocol: "TCP",
			Src: "10.244.2.7:40000", SrcPod: "y/client", Dst: "10.244.1.5:80", DstPod: "x/server", Policies: []string{"x/deny"}}})
	}))
	defer srv.Close()
	var out, errs bytes.Buffer
	addr := strings.TrimPrefix(srv.URL, "http://")
	if code := runPolicy(context.Background(), []string{"log", "--addr", addr}, &out, &errs); code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	for _, want := range []string{"ISOLATED BY", "y/client (10.244.2.7:40000)", "x/server (10.244.1.5:80)", "x/deny", "ingress"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if code := runPolicy(context.Background(), []string{"nothing"}, &out, &errs); code != 2 {
		t.Errorf("a wrong subcommand: exit %d", code)
	}
}
