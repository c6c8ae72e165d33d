package proxy

import (
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// healthServer answers the health-check node ports of Services with
// externalTrafficPolicy Local: 200 when this node has a usable endpoint of
// the Service, 503 otherwise, so a load balancer sends traffic only to nodes
// that can take it (upstream's JSON body: service and localEndpoints).
type healthServer struct {
	log     *slog.Logger
	network string // "tcp4" or "tcp6": each family's proxier answers on its own addresses
	mu      sync.Mutex
	servers map[uint16]*hcServer
}

type hcServer struct {
	srv     *http.Server
	service types.NamespacedName
	local   int
}

func newHealthServer(log *slog.Logger, fam Family) *healthServer {
	network := "tcp4"
	if fam == IPv6 {
		network = "tcp6"
	}
	return &healthServer{log: log, network: network, servers: map[uint16]*hcServer{}}
}

func (h *healthServer) update(state map[types.NamespacedName]*serviceState) {
	want := map[uint16]*hcServer{}
	for _, st := range state {
		for _, sp := range st.ports {
			if !sp.ExternalLocal || sp.HealthCheckPort == 0 {
				continue
			}
			s := want[sp.HealthCheckPort]
			if s == nil {
				s = &hcServer{service: sp.Name.Service}
				want[sp.HealthCheckPort] = s
			}
			s.local += len(usable(st.eps[sp.Name], true, "", false))
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, s := range h.servers {
		if _, ok := want[port]; !ok {
			_ = s.srv.Close()
			delete(h.servers, port)
		}
	}
	for port, w := range want {
		if s, ok := h.servers[port]; ok {
			s.service, s.local = w.service, w.local
			continue
		}
		ln, err := net.Listen(h.network, ":"+strconv.Itoa(int(port)))
		if err != nil {
			h.log.Warn("health-check node port", "port", port, "service", w.service.String(), "err", err)
			continue
		}
		w.srv = &http.Server{Handler: h.handler(port), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = w.srv.Serve(ln) }()
		h.servers[port] = w
	}
}

func (h *healthServer) handler(port uint16) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h.mu.Lock()
		s := h.servers[port]
		var svc types.NamespacedName
		local := 0
		if s != nil {
			svc, local = s.service, s.local
		}
		h.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if local == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(map[string]any{
			"service":        map[string]string{"namespace": svc.Namespace, "name": svc.Name},
			"localEndpoints": local,
		})
	})
}

func (h *healthServer) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, s := range h.servers {
		_ = s.srv.Close()
		delete(h.servers, port)
	}
}
