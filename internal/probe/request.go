package probe

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// Dial opens a connection of network ("tcp", "udp") from inside the
// namespace at nsPath.
func Dial(nsPath, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := netns.Do(nsPath, func() (err error) {
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// ReadAll connects over TCP from inside the namespace and returns all the
// server writes before it closes; timeout bounds the connect and the rest
// of the exchange each.
func ReadAll(nsPath, addr string, timeout time.Duration) (string, error) {
	c, err := Dial(nsPath, "tcp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	if err != nil {
		return string(b), fmt.Errorf("read from %s: %w", addr, err)
	}
	return string(b), nil
}

// HTTPGet sends one GET for path to addr from inside the namespace, on a
// fresh connection, and returns the body of a 200 answer.
func HTTPGet(nsPath, addr, path string) (string, error) {
	c, err := Dial(nsPath, "tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return Request(c, addr, path)
}

// Request sends one GET on an open connection (which stays open for more).
func Request(c net.Conn, host, path string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), nil
}

// UDPRequest sends msg to addr from inside the namespace and returns the
// reply, retrying a lost datagram twice.
func UDPRequest(nsPath, addr, msg string) (string, error) {
	c, err := Dial(nsPath, "udp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	for range 3 {
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return "", err
		}
		b := make([]byte, 2048)
		if n, err := c.Read(b); err == nil {
			return string(b[:n]), nil
		}
	}
	return "", fmt.Errorf("no UDP reply from %s", addr)
}
