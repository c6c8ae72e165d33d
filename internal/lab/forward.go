package lab

import (
	"context"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/workload"
)

// ensureForwarder starts the loopback listener that carries kubectl's
// connections into the control-plane namespace, and points the admin
// kubeconfig at it.
func ensureForwarder(l Layout, binDir string, s *saved) error {
	if s.APIPort == 0 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		s.APIPort = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if err := save(l, *s); err != nil {
			return err
		}
	}
	err := NewProcesses(l).start(component{"api-forwarder", "", []string{binPath(binDir, "flatnet"), "lab", "forward",
		"--listen=127.0.0.1:" + strconv.Itoa(s.APIPort), "--netns=" + netns.Path(l.NS("cp")),
		"--to=" + APIServerIP.String() + ":6443", "--state-dir=" + l.Dir}})
	if err != nil {
		return err
	}
	return writeKubeconfig(l, "admin", "https://127.0.0.1:"+strconv.Itoa(s.APIPort))
}

// Forward listens on the machine's loopback and carries each connection to
// target, dialled from inside the namespace at nsPath: kubectl on the machine
// reaches the API server in the control-plane namespace through it.
func Forward(ctx context.Context, listen, nsPath, target string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	return workload.Serve(ctx, ln, func(c net.Conn) { go forwardConn(c, nsPath, target) })
}

// forwardConn carries c to target, dialled from inside the namespace at
// nsPath, until both directions are done.
func forwardConn(c net.Conn, nsPath, target string) {
	defer c.Close()
	var up net.Conn
	err := netns.Do(nsPath, func() (err error) {
		up, err = net.DialTimeout("tcp", target, 5*time.Second)
		return err
	})
	if err != nil {
		return
	}
	defer up.Close()
	splice(c, up)
}

func splice(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
}
