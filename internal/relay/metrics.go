package relay

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the relay's Prometheus series. Per-subscription series carry
// the subscription id only where an operator needs to tell endpoints apart;
// the latency histogram has no such label, since 10,000 subscriptions times
// its buckets would be a cardinality problem.
type metrics struct {
	registry    *prometheus.Registry
	ingest      *prometheus.CounterVec
	deliveries  *prometheus.CounterVec
	latency     prometheus.Histogram
	deadLetters *prometheus.CounterVec
	filtered    *prometheus.CounterVec
	moved       *prometheus.CounterVec
	revision    *prometheus.GaugeVec
}

func newMetrics(pending func() float64) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		ingest: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "involveo_relay_ingest_total",
			Help: "Events received on POST /v1/events, by HTTP result.",
		}, []string{"result"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "involveo_relay_delivery_attempts_total",
			Help: "Delivery attempts by subscription and result (success, failure).",
		}, []string{"subscription", "result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "involveo_relay_delivery_attempt_duration_seconds",
			Help:    "Duration of delivery attempts, from dial to the response status.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "involveo_relay_dead_letters_total",
			Help: "Deliveries given up after their last retry, by subscription.",
		}, []string{"subscription"}),
		filtered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "involveo_relay_filtered_total",
			Help: "Matching events not delivered because of the subscription's filter, by result (filtered: false, error: could not be evaluated).",
		}, []string{"subscription", "result"}),
		moved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "involveo_relay_deliveries_moved_total",
			Help: "Deliveries stored back in JetStream to wait, by reason (held: endpoint paused or retry not due; bounced: no room to run, handed back briefly; postponed: still no room).",
		}, []string{"reason"}),
		revision: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "involveo_relay_routing_revision_info",
			Help: "1 for the routing table revision currently loaded.",
		}, []string{"revision"}),
	}
	m.registry.MustRegister(
		m.ingest, m.deliveries, m.latency, m.deadLetters, m.filtered, m.moved, m.revision,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "involveo_relay_pending_retries",
			Help: "Deliveries waiting for their next retry.",
		}, pending),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func (m *metrics) setRevision(rev string) {
	m.revision.Reset()
	m.revision.WithLabelValues(rev).Set(1)
}
