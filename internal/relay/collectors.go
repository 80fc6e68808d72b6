package relay

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// scrapeTimeout bounds the JetStream reads one scrape makes.
const scrapeTimeout = 2 * time.Second

var (
	streamBytesDesc = prometheus.NewDesc("involveo_relay_stream_bytes",
		"Bytes stored in each JetStream stream of the relay.", []string{"stream"}, nil)
	streamMessagesDesc = prometheus.NewDesc("involveo_relay_stream_messages",
		"Messages stored in each JetStream stream of the relay.", []string{"stream"}, nil)
	streamLimitDesc = prometheus.NewDesc("involveo_relay_stream_limit_bytes",
		"Configured size limit of each stream; ingest answers 503 when the events stream reaches it.", []string{"stream"}, nil)
	pausedDesc = prometheus.NewDesc("involveo_relay_endpoint_paused",
		"1 for each subscription whose deliveries this relay holds after a long run of failures.", []string{"subscription"}, nil)
)

// relayCollector reports what is read at scrape time: how full the streams
// are (so an alert fires before ingest starts answering 503) and which
// endpoints are paused.
type relayCollector struct{ r *Relay }

func (c relayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{streamBytesDesc, streamMessagesDesc, streamLimitDesc, pausedDesc} {
		ch <- d
	}
}

func (c relayCollector) Collect(ch chan<- prometheus.Metric) {
	for _, id := range c.r.breaker.pausedIDs() {
		ch <- prometheus.MustNewConstMetric(pausedDesc, prometheus.GaugeValue, 1, id)
	}
	if !c.r.queueReady.Load() || !c.r.queue.Connected() {
		return
	}
	q := c.r.queue
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	for _, name := range []string{eventsStream, deliveriesStream, deadLettersStream, attemptsStream} {
		s, err := q.js.Stream(ctx, name)
		if err != nil {
			continue
		}
		info, err := s.Info(ctx)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(streamBytesDesc, prometheus.GaugeValue, float64(info.State.Bytes), name)
		ch <- prometheus.MustNewConstMetric(streamMessagesDesc, prometheus.GaugeValue, float64(info.State.Msgs), name)
		if info.Config.MaxBytes > 0 {
			ch <- prometheus.MustNewConstMetric(streamLimitDesc, prometheus.GaugeValue, float64(info.Config.MaxBytes), name)
		}
	}
}
