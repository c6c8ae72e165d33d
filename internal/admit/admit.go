// Package admit is the conversation between flatnet-cni and flatnetd that
// isolates a new pod from its first packet: before ADD wires the pod's
// interface, the plugin asks the agent of its node to admit the pod's
// addresses into the policy tables, and waits for the answer; DEL tells
// the agent the attachment is gone.
//
// Design notes: one request per connection, a JSON object each way, on a
// unix stream socket. The default socket is abstract ("@flatnet-policy"):
// an abstract socket belongs to a network namespace, not to the
// filesystem, so the plugin (which the runtime starts in the node's
// network namespace) reaches the agent of its own node with no directory
// shared between them, in a cluster (flatnetd on the host network) and in
// the lab (a node per namespace, one filesystem) alike. As any process of
// the namespace may connect, the agent answers only peers running as root
// (SO_PEERCRED), as a socket file of mode 0600 would. A path works too.
package admit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where flatnetd listens unless told otherwise: an
// abstract socket of the node's network namespace.
const DefaultSocket = "@flatnet-policy"

// Ops of a Request.
const (
	Add = "add" // admit the addresses before the pod's interface exists
	Del = "del" // the attachment is gone
)

// Request is what the plugin asks.
type Request struct {
	Op          string       `json:"op"`
	Namespace   string       `json:"namespace,omitempty"` // K8S_POD_NAMESPACE
	Name        string       `json:"name,omitempty"`      // K8S_POD_NAME
	UID         string       `json:"uid,omitempty"`       // K8S_POD_UID, when the runtime gives it
	ContainerID string       `json:"containerID"`
	IfName      string       `json:"ifName"`
	HostVeth    string       `json:"hostVeth"` // the host end of the pod's veth
	IPs         []netip.Addr `json:"ips,omitempty"`
}

// Response is the agent's answer: an empty Error admits.
type Response struct {
	Error string `json:"error,omitempty"`
}

// RefusedError is an agent's refusal (a pod of another node, say), as
// opposed to an agent that could not be reached or did not answer.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return "flatnetd refused: " + e.Reason }

// Ask sends req to the agent at socket and waits for its answer until ctx
// ends.
func Ask(ctx context.Context, socket string, req Request) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("reach flatnetd at %s: %w", socket, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return fmt.Errorf("ask flatnetd at %s: %w", socket, err)
	}
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("no answer from flatnetd at %s: %w", socket, err)
	}
	if resp.Error != "" {
		return &RefusedError{resp.Error}
	}
	return nil
}

// Listen listens on socket: "@name" is abstract, in the caller's network
// namespace; anything else a path, whose stale socket file is replaced
// and which only root may use.
func Listen(socket string) (net.Listener, error) {
	if !strings.HasPrefix(socket, "@") {
		if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
			return nil, err
		}
		if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", socket, err)
	}
	if !strings.HasPrefix(socket, "@") {
		if err := os.Chmod(socket, 0o600); err != nil {
			ln.Close()
			return nil, err
		}
	}
	return ln, nil
}

// Handler answers one request; an error refuses it.
type Handler func(ctx context.Context, req Request) error

// MaxWait bounds how long Serve lets a handler take.
const MaxWait = 30 * time.Second

// Serve answers the requests of root peers on ln with h, each connection
// on its own goroutine, until ln is closed; it waits for the handlers
// running then to return.
func Serve(ctx context.Context, ln net.Listener, h Handler, log *slog.Logger) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			if err := answer(ctx, conn, h); err != nil {
				log.Warn("admission request failed", "err", err)
			}
		}()
	}
}

func answer(ctx context.Context, conn net.Conn, h Handler) error {
	_ = conn.SetDeadline(time.Now().Add(MaxWait + 5*time.Second))
	var req Request
	if err := json.NewDecoder(conn).Decode(&req); err != nil {
		return fmt.Errorf("read request: %w", err)
	}
	var resp Response
	if err := peerIsRoot(conn); err != nil {
		resp.Error = err.Error()
	} else {
		ctx, cancel := context.WithTimeout(ctx, MaxWait)
		if err := h(ctx, req); err != nil {
			resp.Error = err.Error()
		}
		cancel()
	}
	if err := json.NewEncoder(conn).Encode(resp); err != nil {
		return fmt.Errorf("answer %s %s/%s: %w", req.Op, req.Namespace, req.Name, err)
	}
	if resp.Error != "" {
		return fmt.Errorf("%s %s/%s refused: %s", req.Op, req.Namespace, req.Name, resp.Error)
	}
	return nil
}

// peerIsRoot checks the credentials of the process at the other end.
func peerIsRoot(conn net.Conn) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return errors.New("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("peer credentials: %w", cerr)
	}
	if cred.Uid != 0 {
		return fmt.Errorf("only root may ask (peer uid %d)", cred.Uid)
	}
	return nil
}
