package agent

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// redialInterval is how often a request waits to reconnect to an API
// server that cannot be dialed.
const redialInterval = 500 * time.Millisecond

func newClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("API server configuration: %w", err)
	}
	cfg.UserAgent = "flatnetd"
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return redialing{next: rt, interval: redialInterval} })
	return kubernetes.NewForConfig(cfg)
}

// redialing holds a request whose connection to the API server cannot be
// made (refused, unreachable, dial timeout: nothing was sent) and tries
// again every interval until it can or the request's context ends.
//
// Why: client-go's informers back off exponentially after failed lists
// and watches, up to 30 s jittered to 60 s, so after an outage of a minute
// an informer may wait most of another minute before it lists again (seen
// in the lab: a Service created 30 s after the API server returned was not
// yet programmed). A request held here never fails, the informer never
// backs off, and flatnetd catches up within an interval of the API
// server's return. Requests with a body that cannot be replayed fail as
// before.
type redialing struct {
	next     http.RoundTripper
	interval time.Duration
}

func (r redialing) RoundTrip(req *http.Request) (*http.Response, error) {
	for {
		resp, err := r.next.RoundTrip(req)
		if err == nil || !isDialError(err) || req.Body != nil && req.GetBody == nil {
			return resp, err
		}
		select {
		case <-req.Context().Done():
			return nil, err
		case <-time.After(r.interval):
		}
		if req.GetBody != nil {
			body, berr := req.GetBody()
			if berr != nil {
				return nil, err
			}
			req = req.Clone(req.Context())
			req.Body = body
		}
	}
}

// isDialError reports whether err is a failure to connect: the request
// never reached the server, so sending it again is always safe.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}
