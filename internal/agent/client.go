package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/flowcontrol"
)

// redialInterval is how often a request waits to reconnect to an API
// server that cannot be dialed.
const redialInterval = 500 * time.Millisecond

// apiScheme knows the only API groups flatnetd reads and writes: core/v1
// (Nodes, Services, Pods, Namespaces, Events), discovery/v1
// (EndpointSlices) and networking/v1 (NetworkPolicies).
//
// Why not client-go's clientset and informer factory: they register every
// API group of Kubernetes at start-up (k8s.io/client-go/kubernetes/scheme),
// which costs the process about 10 MiB of resident memory before it has
// watched anything (binary pages the registration touches, and the
// registrations themselves) and doubles the binary. The requests are the
// ones the clientset sends: protobuf, the same paths, one rate limiter.
var apiScheme = runtime.NewScheme()

func init() {
	utilruntime.Must(corev1.AddToScheme(apiScheme))
	utilruntime.Must(discoveryv1.AddToScheme(apiScheme))
	utilruntime.Must(networkingv1.AddToScheme(apiScheme))
}

// apiClient is flatnetd's connection to the API server.
type apiClient struct {
	core       rest.Interface // /api/v1
	discovery  rest.Interface // /apis/discovery.k8s.io/v1
	networking rest.Interface // /apis/networking.k8s.io/v1
}

func newClient(kubeconfig string) (*apiClient, error) {
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
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(apiScheme).WithoutConversion()
	if cfg.RateLimiter == nil && cfg.QPS > 0 { // shared by both groups, as the clientset's
		cfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(cfg.QPS, cfg.Burst)
	}
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	group := func(gv *schema.GroupVersion, apiPath string) (rest.Interface, error) {
		c := *cfg
		c.GroupVersion, c.APIPath = gv, apiPath
		return rest.RESTClientForConfigAndClient(&c, httpClient)
	}
	core, err := group(&corev1.SchemeGroupVersion, "/api")
	if err != nil {
		return nil, err
	}
	discovery, err := group(&discoveryv1.SchemeGroupVersion, "/apis")
	if err != nil {
		return nil, err
	}
	networking, err := group(&networkingv1.SchemeGroupVersion, "/apis")
	return &apiClient{core: core, discovery: discovery, networking: networking}, err
}

// informer is an informer of every object of resource (in every
// namespace) through c, indexed by namespace as client-go's informer
// factory indexes them (listers look objects of a namespace up by it).
func informer(c rest.Interface, resource string, obj runtime.Object) cache.SharedIndexInformer {
	lw := cache.NewListWatchFromClient(c, resource, metav1.NamespaceAll, fields.Everything())
	return cache.NewSharedIndexInformer(lw, obj, 0, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
}

// apiEventSink writes Events as client-go's EventSinkImpl does.
type apiEventSink struct{ c rest.Interface }

func (s apiEventSink) Create(e *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := s.c.Post().NamespaceIfScoped(e.Namespace, e.Namespace != "").Resource("events").
		Body(e).Do(context.TODO()).Into(out)
	return out, err
}

func (s apiEventSink) Update(e *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := s.c.Put().NamespaceIfScoped(e.Namespace, e.Namespace != "").Resource("events").Name(e.Name).
		Body(e).Do(context.TODO()).Into(out)
	return out, err
}

func (s apiEventSink) Patch(e *corev1.Event, data []byte) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := s.c.Patch(types.StrategicMergePatchType).NamespaceIfScoped(e.Namespace, e.Namespace != "").Resource("events").
		Name(e.Name).Body(data).Do(context.TODO()).Into(out)
	return out, err
}

// redialing holds a request whose connection to the API server cannot be
// made (refused, unreachable, dial timeout: nothing was sent) and tries
// again every interval until it can or the request's context ends.
//
// Why: client-go's reflectors (under informers too) back off
// exponentially after failed lists and watches, up to 30 s jittered to
// 60 s, so after an outage of a minute a reflector may wait most of
// another minute before it lists again (seen in the lab: a Service created
// 30 s after the API server returned was not yet programmed). A request
// held here never fails, the reflector never backs off, and flatnetd
// catches up within an interval of the API server's return. Requests with a body that cannot be replayed fail as
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
