package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	syncs    *prometheus.CounterVec
	duration prometheus.Histogram
	routes   prometheus.Gauge
	nodes    prometheus.Gauge
	conflist prometheus.Gauge
}

func newMetrics() *metrics {
	return &metrics{
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flatnet_agent_syncs_total",
			Help: "Syncs of routes, egress rules and CNI configuration, by result."}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flatnet_agent_sync_duration_seconds",
			Help: "Duration of one sync.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		routes:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "flatnet_agent_routes", Help: "Routes to other nodes' pod CIDRs programmed by flatnetd."}),
		nodes:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "flatnet_agent_nodes", Help: "Nodes in the informer cache."}),
		conflist: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flatnet_agent_cni_config_installed", Help: "1 once the node's CNI conflist is installed."}),
	}
}

func (m *metrics) register(r prometheus.Registerer) {
	r.MustRegister(m.syncs, m.duration, m.routes, m.nodes, m.conflist)
}

func (m *metrics) observe(d time.Duration, err error) {
	m.duration.Observe(d.Seconds())
	result := "success"
	if err != nil {
		result = "error"
	}
	m.syncs.WithLabelValues(result).Inc()
}
