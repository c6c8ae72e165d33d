// Package lab_test brings up a 3-node lab (the real upstream control plane,
// nodes as network namespaces, flatnet-cni and flatnetd on each) and checks
// the flat pod network end to end. It needs root; `go test -short` skips it.
package lab_test

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/flatnet-io/flatnet/internal/cnitest"
	"github.com/flatnet-io/flatnet/internal/lab"
	"github.com/flatnet-io/flatnet/internal/probe"
)

var (
	skipReason string
	root       string // repository root
	labName    = fmt.Sprintf("t%d", os.Getpid()%10000)
	stateRoot  string
	layout     lab.Layout
	client     *kubernetes.Clientset
)

const nodes = 3

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	flag.Parse()
	if testing.Short() || os.Getenv("FLATNET_SKIP_LAB") != "" {
		skipReason = "lab tests skipped (-short or FLATNET_SKIP_LAB)"
		return m.Run()
	}
	if os.Geteuid() != 0 {
		skipReason = "lab tests need root (network namespaces)"
		return m.Run()
	}
	var err error
	if root, err = cnitest.ModuleRoot(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if out, err := exec.Command(filepath.Join(root, "scripts", "build.sh")).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		return 1
	}
	if stateRoot, err = os.MkdirTemp("", "flatnet-lab-test-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(stateRoot)
	up := flatnet("lab", "up", "--nodes", fmt.Sprint(nodes))
	up.Stdout, up.Stderr = os.Stdout, os.Stderr
	upErr := up.Run()
	code := 1
	if upErr != nil {
		fmt.Fprintf(os.Stderr, "lab up: %v\n", upErr)
		dumpLogs()
	} else {
		layout, err = lab.Open(stateRoot, labName)
		if err == nil {
			client, err = lab.Client(layout)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
		} else {
			code = m.Run()
			if code != 0 {
				dumpLogs()
			}
		}
	}
	if err := checkDown(); err != nil {
		fmt.Fprintf(os.Stderr, "--- FAIL: lab down: %v\n", err)
		return 1
	}
	fmt.Println("lab down: no namespace, process or state left behind")
	return code
}

// flatnet runs the CLI against the test's lab.
func flatnet(args ...string) *exec.Cmd {
	if len(args) >= 2 && args[0] == "lab" {
		args = append(args[:2:2], append([]string{"--name", labName, "--state-root", stateRoot}, args[2:]...)...)
	}
	return exec.Command(filepath.Join(root, "bin", "flatnet"), args...)
}

// checkDown runs `lab down` twice and verifies that nothing is left.
func checkDown() error {
	for range 2 {
		if out, err := flatnet("lab", "down").CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
	}
	l, err := lab.NewLayout(stateRoot, labName, nodes)
	if err != nil {
		return err
	}
	if left, _ := l.Namespaces(); len(left) > 0 {
		return fmt.Errorf("namespaces left: %v", left)
	}
	if _, err := os.Stat(l.Dir); err == nil {
		return fmt.Errorf("state directory %s left", l.Dir)
	}
	out, _ := exec.Command("pgrep", "-f", l.Dir).Output()
	if s := strings.TrimSpace(string(out)); s != "" {
		return fmt.Errorf("processes left: %s", s)
	}
	return nil
}

func dumpLogs() {
	if os.Getenv("CI") == "" && os.Getenv("FLATNET_LAB_LOGS") == "" {
		return
	}
	files, _ := filepath.Glob(filepath.Join(stateRoot, labName, "logs", "*.log"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		fmt.Fprintf(os.Stderr, "=== %s (last lines)\n%s\n", filepath.Base(f), strings.Join(lines[max(0, len(lines)-15):], "\n"))
	}
}

func requireLab(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

// namespace makes a Kubernetes namespace for one test, deleted at its end.
func namespace(t *testing.T) string {
	t.Helper()
	name := strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	if len(name) > 50 {
		name = name[:50]
	}
	ctx := context.Background()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Pods need the namespace's default ServiceAccount (admission).
	eventually(t, 30*time.Second, "default service account", func() error {
		_, err := client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	t.Cleanup(func() {
		// Wait until it is gone, so the next test starts from an empty lab.
		_ = client.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
		eventually(t, 2*time.Minute, "namespace "+name+" deleted", func() error {
			if _, err := client.CoreV1().Namespaces().Get(context.Background(), name, metav1.GetOptions{}); err == nil {
				return fmt.Errorf("still there")
			}
			return nil
		})
	})
	return name
}

// eventually retries fn until it succeeds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s: not true after %s: %v", what, timeout, err)
}

// podNS is the path of a pod's network namespace.
func podNS(p *corev1.Pod) string { return layout.PodNetNS(p) }

// httpGet does one HTTP GET from inside a namespace, on a fresh connection.
func httpGet(nsPath, url string) (string, error) {
	addr, path, _ := strings.Cut(strings.TrimPrefix(url, "http://"), "/")
	return probe.HTTPGet(nsPath, addr, "/"+path)
}

func host(hostport string) string {
	h, _, _ := net.SplitHostPort(hostport)
	return h
}
