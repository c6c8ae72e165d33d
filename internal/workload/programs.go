package workload

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Main runs built-in program args[0] with the rest as its arguments.
func Main(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: flatnet workload netexec|serve-hostname|porter|pause|http-hostname [flags]")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var err error
	switch args[0] {
	case "netexec":
		err = netexec(ctx, args[1:])
	case "serve-hostname":
		err = serveHostname(ctx, args[1:])
	case "porter":
		err = porter(ctx)
	case "pause":
		<-ctx.Done()
	case "http-hostname":
		fs := flag.NewFlagSet("http-hostname", flag.ContinueOnError)
		port := fs.Int("port", 80, "HTTP port")
		if err = fs.Parse(args[1:]); err == nil {
			err = serveHTTP(ctx, *port, textHandler(podName()+"\n"))
		}
	default:
		err = fmt.Errorf("unknown program %q", args[0])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, args[0]+":", err)
		return 1
	}
	return 0
}

func podName() string {
	if n := os.Getenv(EnvPodName); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}

func textHandler(body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, body) })
}

// serveHTTP serves h on port until ctx ends.
func serveHTTP(ctx context.Context, port int, h http.Handler) error {
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// netexec is agnhost netexec: HTTP /hostname, /clientip, /echo, /healthz,
// /exit, /shutdown and / on --http-port; the UDP commands "hostname",
// "echo <msg>" and "clientip" on --udp-port.
func netexec(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("netexec", flag.ContinueOnError)
	httpPort := fs.Int("http-port", 8080, "HTTP port")
	udpPort := fs.Int("udp-port", 8081, "UDP port (-1: none)")
	_ = fs.Int("sctp-port", -1, "SCTP port (not supported by the lab kernel; ignored)")
	delay := fs.Int("delay-shutdown", 0, "seconds to keep serving after SIGTERM")
	if err := fs.Parse(args); err != nil {
		return err
	}
	shutdown, stopAll := context.WithCancel(context.Background())
	defer stopAll()
	go func() {
		<-ctx.Done()
		time.Sleep(time.Duration(*delay) * time.Second)
		stopAll()
	}()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "NOW: %v", time.Now())
	})
	mux.HandleFunc("/hostname", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, podName()) })
	mux.HandleFunc("/clientip", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, r.RemoteAddr) })
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, r.URL.Query().Get("msg")) })
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("/header", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Header.Get(r.URL.Query().Get("key")))
	})
	mux.HandleFunc("/exit", func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		w.WriteHeader(http.StatusNoContent)
		go func() { time.Sleep(50 * time.Millisecond); os.Exit(code) }()
	})
	mux.HandleFunc("/shutdown", func(w http.ResponseWriter, _ *http.Request) { stopAll() })
	if *udpPort > 0 {
		pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(*udpPort))
		if err != nil {
			return err
		}
		go func() { _ = ServePackets(shutdown, pc, netexecUDP) }()
	}
	return serveHTTP(shutdown, *httpPort, mux)
}

// netexecUDP answers netexec's UDP commands; others get no answer.
func netexecUDP(msg []byte, from net.Addr) ([]byte, bool) {
	cmd := strings.TrimSpace(string(msg))
	switch {
	case cmd == "hostname":
		return []byte(podName()), true
	case cmd == "clientip":
		return []byte(from.String()), true
	case strings.HasPrefix(cmd, "echo "):
		return []byte(strings.TrimPrefix(cmd, "echo ")), true
	}
	return nil, false
}

// serveHostname is agnhost serve-hostname: the pod's name over HTTP (and
// raw TCP/UDP when asked) on --port.
func serveHostname(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve-hostname", flag.ContinueOnError)
	port := fs.Int("port", 9376, "port")
	useHTTP := fs.Bool("http", true, "serve HTTP")
	useTCP := fs.Bool("tcp", false, "serve raw TCP")
	useUDP := fs.Bool("udp", false, "serve UDP")
	if err := fs.Parse(args); err != nil {
		return err
	}
	name := podName()
	if *useUDP {
		pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(*port))
		if err != nil {
			return err
		}
		go func() {
			_ = ServePackets(ctx, pc, func([]byte, net.Addr) ([]byte, bool) { return []byte(name), true })
		}()
	}
	if *useTCP {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(*port))
		if err != nil {
			return err
		}
		return Serve(ctx, ln, func(c net.Conn) {
			_, _ = io.WriteString(c, name)
			c.Close()
		})
	}
	if *useHTTP {
		return serveHTTP(ctx, *port, textHandler(name))
	}
	<-ctx.Done()
	return nil
}

// porter is agnhost porter: for every SERVE_PORT_<n>=<text>, HTTP on port n
// answering <text>.
func porter(ctx context.Context) error {
	errc := make(chan error, 1)
	served := 0
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		ps, ok := strings.CutPrefix(k, "SERVE_PORT_")
		if !ok {
			continue
		}
		port, err := strconv.Atoi(ps)
		if err != nil {
			return fmt.Errorf("%s: not a port", k)
		}
		served++
		go func() { errc <- serveHTTP(ctx, port, textHandler(v)) }()
	}
	if served == 0 {
		return errors.New("no SERVE_PORT_<n> variables")
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return nil
	}
}
