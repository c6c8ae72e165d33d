package policy

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The log of denied connections: the tables send the first packet of a
// denied connection of a pod whose namespace asks (LogAnnotation) to
// nfnetlink_log group LogGroup, prefixed "flatnet:ingress" or
// "flatnet:egress", at most LogRate a second per direction; Log reads
// the group, names the pods and the policies that isolate the judged pod
// (from the engines' last models), and keeps the last entries for
// `flatnet policy log` (and writes each to the agent's log).

// Denial is one logged denied connection.
type Denial struct {
	Time      time.Time `json:"time"`
	Direction string    `json:"direction"` // "ingress": Dst is the isolated pod; "egress": Src
	Protocol  string    `json:"protocol"`
	Src       string    `json:"src"` // address[:port]
	Dst       string    `json:"dst"`
	SrcPod    string    `json:"srcPod,omitempty"` // namespace/name
	DstPod    string    `json:"dstPod,omitempty"`
	Policies  []string  `json:"policies"` // isolating the judged pod in that direction
}

// Log reads the denials the tables send; the zero value is not usable.
type Log struct {
	engines []*Engine
	log     *slog.Logger
	mu      sync.Mutex
	ring    []Denial
	next    int
}

// LogSize is how many denials a Log keeps.
const LogSize = 1000

// NewLog names denials with the engines' models.
func NewLog(engines []*Engine, log *slog.Logger) *Log {
	return &Log{engines: engines, log: log}
}

// Recent are the denials kept, oldest first.
func (l *Log) Recent() []Denial {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ring) < LogSize {
		return append([]Denial{}, l.ring...)
	}
	return append(append([]Denial{}, l.ring[l.next:]...), l.ring[:l.next]...)
}

// ServeHTTP answers the denials kept, as JSON.
func (l *Log) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(l.Recent())
}

func (l *Log) keep(d Denial) {
	l.mu.Lock()
	if len(l.ring) < LogSize {
		l.ring = append(l.ring, d)
	} else {
		l.ring[l.next] = d
		l.next = (l.next + 1) % LogSize
	}
	l.mu.Unlock()
	l.log.Info("connection denied", "direction", d.Direction, "protocol", d.Protocol, "src", d.Src, "srcPod", d.SrcPod,
		"dst", d.Dst, "dstPod", d.DstPod, "policies", strings.Join(d.Policies, ","))
}

// Run reads group LogGroup of the caller's network namespace until ctx
// ends.
func (l *Log) Run(ctx context.Context) error {
	fd, err := openNflog(LogGroup)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	buf := make([]byte, 1<<16)
	for ctx.Err() == nil {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue // the receive timeout: look at ctx
		}
		if errors.Is(err, unix.ENOBUFS) {
			l.log.Warn("denied connections lost: the log's socket buffer overflowed")
			continue
		}
		if err != nil {
			return fmt.Errorf("read nfnetlink_log: %w", err)
		}
		for _, p := range parseNflog(buf[:n]) {
			if d, ok := l.name(p); ok {
				l.keep(d)
			}
		}
	}
	return nil
}

// name reads a logged packet and names its pods and policies.
func (l *Log) name(p loggedPacket) (Denial, bool) {
	dir, ok := strings.CutPrefix(p.prefix, "flatnet:")
	if !ok {
		return Denial{}, false
	}
	d, src, dst, ok := parsePacket(p.payload)
	if !ok {
		return Denial{}, false
	}
	d.Time, d.Direction = p.time, dir
	judged := dst
	if dir == egressChain {
		judged = src
	}
	for _, e := range l.engines {
		m := e.model.Load()
		if m == nil || !m.Family.Has(judged) {
			continue
		}
		d.SrcPod, d.DstPod = m.Names[src], m.Names[dst]
		pol := m.Ingress.Policies
		if dir == egressChain {
			pol = m.Egress.Policies
		}
		d.Policies = pol[judged]
	}
	return d, true
}

// openNflog binds a netlink socket to an nfnetlink_log group, copying
// 128 bytes of each packet (headers), with a receive timeout.
func openNflog(group uint16) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("netlink bind: %w", err)
	}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 500000})
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1<<20)
	mode := binary.BigEndian.AppendUint32(nil, 128)
	mode = append(mode, nfulnlCopyPacket, 0)
	for _, a := range []struct {
		typ uint16
		val []byte
	}{
		{nfulaCfgCmd, []byte{nfulnlCfgCmdBind}},
		{nfulaCfgMode, mode},
		{nfulaCfgQthresh, binary.BigEndian.AppendUint32(nil, 1)}, // each packet at once
	} {
		if err := nflogConfig(fd, group, a.typ, a.val); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

// nflogConfig sends one configuration attribute for group and waits for
// the kernel's ack.
func nflogConfig(fd int, group, typ uint16, val []byte) error {
	msg := make([]byte, 16, 32)
	binary.NativeEndian.PutUint16(msg[4:], unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgConfig)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	msg = append(msg, unix.AF_UNSPEC, 0, byte(group>>8), byte(group)) // nfgenmsg, res_id big-endian
	msg = binary.NativeEndian.AppendUint16(msg, uint16(4+len(val)))
	msg = binary.NativeEndian.AppendUint16(msg, typ)
	msg = append(msg, val...)
	for len(msg)%4 != 0 {
		msg = append(msg, 0)
	}
	binary.NativeEndian.PutUint32(msg, uint32(len(msg)))
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("configure nfnetlink_log group %d: %w", group, err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("configure nfnetlink_log group %d: %w", group, err)
	}
	if n >= 20 && binary.NativeEndian.Uint16(buf[4:]) == unix.NLMSG_ERROR {
		if errno := int32(binary.NativeEndian.Uint32(buf[16:])); errno != 0 {
			return fmt.Errorf("configure nfnetlink_log group %d: %w", group, unix.Errno(-errno))
		}
	}
	return nil
}

// nfnetlink_log (linux/netfilter/nfnetlink_log.h), which x/sys/unix lacks.
const (
	nfulnlMsgPacket  = 0
	nfulnlMsgConfig  = 1
	nfulaPayload     = 9
	nfulaPrefix      = 10
	nfulaTimestamp   = 3
	nfulaCfgCmd      = 1
	nfulaCfgMode     = 2
	nfulaCfgQthresh  = 5
	nfulnlCfgCmdBind = 1
	nfulnlCopyPacket = 2
)
