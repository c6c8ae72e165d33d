package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"sync"
	"time"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// Down removes everything lab name made: processes, namespaces (and with
// them every link), state. Running it on a lab that is gone is fine.
func Down(stateRoot, name string, out io.Writer) error {
	l, err := NewLayout(stateRoot, name, 0)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (network namespaces)")
	}
	if _, err := os.Stat(l.Path("lab.json")); err == nil { // a lab's directory, not some other
		unlock, err := l.lock()
		if err != nil {
			return err
		}
		defer unlock()
	}
	procs := l.processes()
	step(out, "stopping %d processes of lab %q", len(procs), name)
	l.stopAll(5 * time.Second)
	if left := l.processes(); len(left) > 0 {
		return fmt.Errorf("processes of the lab survive SIGKILL: %v", left)
	}
	names, err := l.Namespaces()
	errs := []error{err}
	for _, n := range names {
		errs = append(errs, netns.Delete(n))
	}
	step(out, "removed %d network namespaces %s*", len(names), l.Prefix())
	step(out, "removing %s", l.Dir)
	errs = append(errs, l.removeState())
	return errors.Join(errs...)
}

// removeState removes the state directory, but only one that a lab made:
// it holds lab.json (written first thing by `lab up`, right after taking
// the lock), or nothing but the lock file.
// Anything else at that path is left alone with an error.
func (l Layout) removeState() error {
	entries, err := os.ReadDir(l.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	onlyLock := len(entries) == 0 || len(entries) == 1 && entries[0].Name() == lockFile
	if _, err := os.Lstat(l.Path("lab.json")); err != nil && !onlyLock {
		return fmt.Errorf("%s has no lab.json: not a lab's state directory, left alone", l.Dir)
	}
	return os.RemoveAll(l.Dir)
}

// Forward listens on the machine's loopback and carries each connection to
// target, dialled from inside the namespace at nsPath: kubectl on the machine
// reaches the API server in the control-plane namespace through it.
func Forward(ctx context.Context, listen, nsPath, target string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
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
		}()
	}
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
