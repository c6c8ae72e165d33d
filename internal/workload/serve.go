package workload

import (
	"context"
	"net"
)

// Serve accepts connections on ln until ctx ends and hands each to handle,
// on the accepting goroutine: a handler that keeps its connection starts a
// goroutine of its own. When ctx ends it closes ln and returns nil; any
// other Accept error ends it and is returned. ln is closed when Serve
// returns. The built-in TCP servers and the lab's API forwarder run on it.
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
