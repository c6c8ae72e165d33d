package workload

import (
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	for _, tc := range []struct {
		image   string
		command []string
		args    []string
		want    string
		fail    string
	}{
		{image: "registry.k8s.io/e2e-test-images/agnhost:2.53", args: []string{"netexec", "--http-port=8080"}, want: "/bin/flatnet workload netexec --http-port=8080"},
		{image: "registry.k8s.io/e2e-test-images/agnhost:2.53", command: []string{"/agnhost"}, args: []string{"serve-hostname"}, want: "/bin/flatnet workload serve-hostname"},
		{image: "registry.k8s.io/e2e-test-images/agnhost@sha256:abc", command: []string{"/agnhost", "porter"}, want: "/bin/flatnet workload porter"},
		{image: "registry.k8s.io/pause:3.10", want: "/bin/flatnet workload pause"},
		{image: "nginx:1.27", want: "/bin/flatnet workload http-hostname --port=80"},
		{image: "docker.io/library/httpd", want: "/bin/flatnet workload http-hostname --port=80"},
		{image: "busybox", command: []string{"sleep"}, args: []string{"3600"}, want: "sleep 3600"},
		{image: "busybox", command: []string{"/no/such/program"}, fail: "does not exist on this machine"},
		{image: "redis:7", fail: "names no command"},
		{image: "registry.k8s.io/e2e-test-images/agnhost:2.53", args: []string{"dns-server"}, fail: "not built into the lab"},
	} {
		got, err := Resolve("/bin/flatnet", tc.image, tc.command, tc.args)
		if tc.fail != "" {
			if err == nil || !strings.Contains(err.Error(), tc.fail) {
				t.Errorf("%s %v %v: got %v, %v; want error containing %q", tc.image, tc.command, tc.args, got, err, tc.fail)
			}
			continue
		}
		if err != nil || strings.Join(got, " ") != tc.want {
			t.Errorf("%s %v %v: got %q, %v; want %q", tc.image, tc.command, tc.args, got, err, tc.want)
		}
	}
}
