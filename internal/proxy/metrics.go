package proxy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's Prometheus metrics.
type Metrics struct {
	syncDuration       prometheus.Histogram
	syncErrors         prometheus.Counter
	syncs              *prometheus.CounterVec
	lastFullSync       prometheus.Gauge
	programmingLatency prometheus.Histogram
	rules              prometheus.Gauge
	elements           prometheus.Gauge
	chains             prometheus.Gauge
	conflicts          prometheus.Gauge
	repairs            prometheus.Counter
}

// NewMetrics makes unregistered metrics of the proxier of one family; they
// carry the family as the constant label ip_family, so both proxiers of a
// dual-stack node register in one registry.
func NewMetrics(fam Family) *Metrics {
	l := prometheus.Labels{"ip_family": fam.String()}
	return &Metrics{
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flatnet_proxy_sync_duration_seconds", ConstLabels: l,
			Help: "Duration of a sync of the proxy's nftables table (full or partial).", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		syncErrors:   prometheus.NewCounter(prometheus.CounterOpts{Name: "flatnet_proxy_sync_errors_total", ConstLabels: l, Help: "Failed proxy syncs."}),
		lastFullSync: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flatnet_proxy_last_full_sync_seconds", ConstLabels: l, Help: "Duration of the last full sync."}),
		syncs:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flatnet_proxy_syncs_total", ConstLabels: l, Help: "Proxy syncs by kind: full, partial (through nft), elements (a partial sync of map elements only, over netlink)."}, []string{"kind"}),
		programmingLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flatnet_proxy_network_programming_duration_seconds", ConstLabels: l,
			Help:    "From an EndpointSlice change (its last-change-trigger-time) to its rules being live.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 18)}),
		rules:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "flatnet_proxy_rules", ConstLabels: l, Help: "Rules in the proxy's table."}),
		elements: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flatnet_proxy_set_elements", ConstLabels: l, Help: "Map and set elements in the proxy's table."}),
		chains:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "flatnet_proxy_chains", ConstLabels: l, Help: "Chains in the proxy's table."}),
		conflicts: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flatnet_proxy_conflicting_frontends", ConstLabels: l,
			Help: "Service frontends (address, protocol, port) not programmed because another Service owns them or they are a ClusterIP."}),
		repairs: prometheus.NewCounter(prometheus.CounterOpts{Name: "flatnet_proxy_table_repairs_total", ConstLabels: l,
			Help: "Times the proxy found its table changed behind its back (flushed, deleted) and rewrote it."}),
	}
}

// Register adds the metrics to r.
func (m *Metrics) Register(r prometheus.Registerer) {
	r.MustRegister(m.syncDuration, m.syncErrors, m.syncs, m.lastFullSync, m.programmingLatency, m.rules, m.elements, m.chains, m.conflicts, m.repairs)
}

func (m *Metrics) observeSync(d time.Duration, err error) {
	m.syncDuration.Observe(d.Seconds())
	if err != nil {
		m.syncErrors.Inc()
	}
}

func (m *Metrics) observeKind(kind string) { m.syncs.WithLabelValues(kind).Inc() }
