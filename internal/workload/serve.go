package workload

import (
	"context"
	"net"
)

// Serve accepts connections on ln until ctx ends and hands each to handle,
// on the accepting goroutine: a handler that keeps its connection starts a
// goroutine of its own. When ctx ends it closes ln and returns nil; any
// other Accept error ends it and is returned. ln is closed when Serve
// returns. The built-in TCP servers, the lab's API forwarder and the
// real-kernel tests' servers run on it.
func Serve(ctx context.Context, ln net.Listener, handle func(net.Conn)) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		handle(c)
	}
}

// ServePackets reads datagrams on pc until ctx ends and sends back to each
// sender what reply makes of its datagram; reply returns false to send
// nothing. When ctx ends it closes pc and returns nil; any other read error
// ends it and is returned. pc is closed when ServePackets returns.
func ServePackets(ctx context.Context, pc net.PacketConn, reply func(msg []byte, from net.Addr) ([]byte, bool)) error {
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	defer pc.Close()
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if out, ok := reply(buf[:n], from); ok {
			_, _ = pc.WriteTo(out, from)
		}
	}
}
