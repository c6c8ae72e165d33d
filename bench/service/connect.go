package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"time"
	"unsafe"

	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// connector opens TCP connections from inside one network namespace with
// plain blocking system calls on a thread of its own, which entered the
// namespace once. (Entering the namespace for every connection, as a test
// helper does, costs more than the connection and hands the thread around
// the Go scheduler: the rate would measure Go, not the data path.)
//
// The connect itself is a raw system call: the Go scheduler is not told
// that the thread blocks, so it does not hand the thread's P to another
// thread and back around each connect. That hand-off costs more the longer
// a connect blocks and made a ClusterIP look 10-15 % slower than it is
// against pod-direct (measured in the lab: 0.87 with unix.Connect, 0.96 raw).
type connector struct {
	sa      []byte // struct sockaddr_in or sockaddr_in6, as the kernel reads it
	family  int
	timeout unix.Timeval
}

func newConnector(addr string, timeout time.Duration) (*connector, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	c := &connector{timeout: unix.NsecToTimeval(timeout.Nanoseconds())}
	port := binary.BigEndian.AppendUint16(nil, ap.Port())
	if ap.Addr().Is4() {
		c.family = unix.AF_INET
		a := ap.Addr().As4()
		c.sa = make([]byte, unix.SizeofSockaddrInet4)
		binary.NativeEndian.PutUint16(c.sa, unix.AF_INET)
		copy(c.sa[2:], port)
		copy(c.sa[4:], a[:])
	} else {
		c.family = unix.AF_INET6
		a := ap.Addr().As16()
		c.sa = make([]byte, unix.SizeofSockaddrInet6) // flow info and scope id stay 0
		binary.NativeEndian.PutUint16(c.sa, unix.AF_INET6)
		copy(c.sa[2:], port)
		copy(c.sa[8:], a[:])
	}
	return c, nil
}

// once connects and closes with RST (no TIME_WAIT); a connect that gets no
// answer within the timeout fails with EAGAIN/EINPROGRESS. The kernel picks
// the source port.
func (c *connector) once() error { return c.from(0) }

// from is once from source port port (0: the kernel's choice).
func (c *connector) from(port int) error {
	fd, err := unix.Socket(c.family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if port != 0 {
		// SO_REUSEADDR: a port whose only socket is in TIME_WAIT (another
		// connection's, to elsewhere) is one the kernel would pick too.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		var sa unix.Sockaddr = &unix.SockaddrInet4{Port: port}
		if c.family == unix.AF_INET6 {
			sa = &unix.SockaddrInet6{Port: port}
		}
		if err := unix.Bind(fd, sa); err != nil {
			return err
		}
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &c.timeout); err != nil {
		return err
	}
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		return err
	}
	_, _, errno := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&c.sa[0])), uintptr(len(c.sa)))
	if errno == 0 {
		return nil
	}
	if errno == unix.EINTR { // a signal to the thread (the Go runtime's): the connect goes on
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		for {
			n, perr := unix.Poll(fds, int(c.timeout.Nano()/1e6))
			if perr == unix.EINTR {
				continue
			}
			if perr != nil {
				return perr
			}
			if n == 0 {
				return unix.EINPROGRESS // timed out, as a blocking connect would
			}
			break
		}
		soerr, gerr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if gerr != nil {
			return gerr
		}
		if soerr != 0 {
			return unix.Errno(soerr)
		}
		return nil
	}
	return errno
}

// inNamespace runs fn on a locked thread inside nsPath. The thread is never
// given back to the scheduler (it exits with the goroutine), so nothing else
// ever runs in the namespace by accident.
func inNamespace(nsPath string, fn func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread dies with the goroutine
		ns, err := vnetns.GetFromPath(nsPath)
		if err == nil {
			err = vnetns.Set(ns)
			ns.Close()
		}
		if err != nil {
			errc <- fmt.Errorf("enter %s: %w", nsPath, err)
			return
		}
		errc <- nil
		fn()
	}()
	return <-errc
}
