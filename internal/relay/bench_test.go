package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nuid"

	"github.com/involveo/webhook-operator/internal/delivery"
	"github.com/involveo/webhook-operator/internal/event"
	"github.com/involveo/webhook-operator/internal/natstest"
	"github.com/involveo/webhook-operator/internal/routing"

	"github.com/involveo/webhook-operator/internal/syncpolicy"
)

// The end-to-end benchmarks post b.N seed events to a relay (durable: every
// event and delivery goes through JetStream) and, in the same run, to an
// in-memory forwarder that validates, routes and POSTs with the same
// delivery client but keeps nothing. Both deliver to real HTTP sinks on
// 127.0.0.1 that answer 200. The target is relay ≥ 0.5× forwarder.
// Each case (one subscription, 100- and 1,000-way fan-out) runs on the
// relay's embedded JetStream (BenchmarkRelay_*), on a 3-node JetStream
// cluster (BenchmarkRelayCluster_*) and in the forwarder
// (BenchmarkForwarder_*). BenchmarkRelay_Isolation, in
// bench_isolation_test.go, measures a hanging endpoint's effect on others.
//
//	make bench             # BENCH=RelayCluster for the cluster cases alone
//
// Figures per benchmark:
//   - events/s and deliveries/s: b.N events (each delivered to every
//     subscription) over the time from the first POST to the last delivery;
//   - p50-ms, p99-ms: latency of a delivery, from the moment its producer
//     sent the POST to the moment the sink received it;
//   - accepted/s: how fast ingest answered 202. The producers are paced by
//     ingest only, so where it exceeds events/s the difference is a backlog,
//     and the latencies above measure that backlog;
//   - cpu-cores, cpu-us/delivery: CPU used by the whole process (target,
//     sinks and producers) while timed. cpu-cores near GOMAXPROCS means the
//     run was CPU-bound; well below, something waited. cpu-us/delivery
//     compares the two designs even on a machine shared with other work.

const (
	// benchProducers is how many clients post at once, each over its own
	// keep-alive connection: a busy producer with a connection pool.
	benchProducers = 16
	// benchWorkers and benchInFlight are the relay's worker pool and
	// per-subscription cap; the forwarder gets the same pool size and the
	// same client (whose per-host connection cap is benchInFlight).
	benchWorkers  = 128
	benchInFlight = 16
	// benchBatch is the events per request in the batch ingest case.
	benchBatch = 100
	// benchFanout is the number of subscriptions matching every event in the
	// fan-out case, each with its own sink listener like separate tenants.
	benchFanout = 100
	// benchFanoutWide is the wide fan-out case: 1,000 tenants taking every
	// event.
	benchFanoutWide = 1000
	// benchClusterNodes is the size of the external JetStream cluster, and
	// the replicas of every stream and consumer on it.
	benchClusterNodes = 3
	// benchDrainTimeout bounds the wait for the last delivery; it only
	// guards against a hung run, a healthy one takes seconds.
	benchDrainTimeout = 3 * time.Minute
	// benchSeqMarker precedes the event's sequence number in the title of
	// the posted event, so that the sink can look up when it was sent
	// without parsing the JSON.
	benchSeqMarker = "bench#"
	benchSeqDigits = 10
)

// The fan-out cases need no fixed b.N: an event costs the relay about
// fan-out × 50 µs, so -benchtime=3s settles on some 60 events at 1,000-way
// fan-out (60,000 deliveries), after a first round of one event.

func BenchmarkRelay_OneSubscription(b *testing.B) { benchEndToEnd(b, startBenchRelay, 1) }

// BenchmarkRelay_OneSubscriptionSyncAlways is the first case with every
// write flushed to disk before it is acknowledged (--sync-interval=always):
// the price of surviving the machine's loss, not only the process's.
func BenchmarkRelay_OneSubscriptionSyncAlways(b *testing.B) {
	benchEndToEnd(b, func(b *testing.B, routes *routing.Routes, _ func()) string {
		cfg := benchRelayConfig(b)
		cfg.Queue.Sync = syncpolicy.Policy{Always: true}
		return runBenchRelay(b, cfg, routes)
	}, 1)
}

func BenchmarkRelay_Fanout100(b *testing.B) { benchEndToEnd(b, startBenchRelay, benchFanout) }

func BenchmarkRelay_Fanout1000(b *testing.B) { benchEndToEnd(b, startBenchRelay, benchFanoutWide) }

func BenchmarkForwarder_OneSubscription(b *testing.B) { benchEndToEnd(b, startForwarder, 1) }

func BenchmarkForwarder_Fanout100(b *testing.B) { benchEndToEnd(b, startForwarder, benchFanout) }

func BenchmarkForwarder_Fanout1000(b *testing.B) { benchEndToEnd(b, startForwarder, benchFanoutWide) }

// The cluster cases run the relay on an external JetStream, as deployed with
// --nats-url: three nats-servers in this process, routed over 127.0.0.1,
// every stream and consumer with three replicas. Each round starts a fresh
// cluster (seconds, outside the timer) so no round inherits another's
// streams.

func BenchmarkRelayCluster_OneSubscription(b *testing.B) { benchEndToEnd(b, startClusterRelay, 1) }

func BenchmarkRelayCluster_Fanout100(b *testing.B) { benchEndToEnd(b, startClusterRelay, benchFanout) }

func BenchmarkRelayCluster_Fanout1000(b *testing.B) {
	benchEndToEnd(b, startClusterRelay, benchFanoutWide)
}

// benchTarget starts something that takes POST /v1/events and delivers per
// routes; it returns the ingest URL and stops at the benchmark's cleanup. It
// calls abort when a delivery is lost, so the run ends instead of waiting.
type benchTarget func(b *testing.B, routes *routing.Routes, abort func()) string

// BenchmarkRelay_BatchIngest posts the same load as
// BenchmarkRelay_OneSubscription in batches of benchBatch events
// (POST /v1/events:batch): one request and one wait for JetStream per batch
// instead of per event. The forwarder has no batch endpoint; compare with
// the single-post relay case.
func BenchmarkRelay_BatchIngest(b *testing.B) { benchEndToEndBatch(b, startBenchRelay, 1, benchBatch) }

func benchEndToEnd(b *testing.B, start benchTarget, subscriptions int) {
	benchEndToEndBatch(b, start, subscriptions, 1)
}

// benchEndToEndBatch posts single events when batch is 1, else batches of
// that many as NDJSON.
func benchEndToEndBatch(b *testing.B, start benchTarget, subscriptions, batch int) {
	sink := newBenchSink(b, subscriptions, b.N)
	ingestURL := start(b, sink.routes(b), sink.abort)
	bodies := newBenchBodies(b)
	client := newBenchClient(b)

	b.ResetTimer()
	began := time.Now()
	cpuBefore := processCPU()
	var next atomic.Int64
	var producers sync.WaitGroup
	for range benchProducers {
		producers.Go(func() {
			for {
				first := int(next.Add(int64(batch)) - int64(batch))
				if first >= b.N || sink.isAborted() {
					return
				}
				var err error
				if batch == 1 {
					body := bodies.body(first)
					sink.sent[first].Store(int64(time.Since(sink.epoch)))
					err = postEvent(client, ingestURL, body)
				} else {
					err = postBatchOf(client, ingestURL+":batch", bodies, sink, first, min(first+batch, b.N))
				}
				if err != nil {
					b.Errorf("events from %d: %v", first, err)
					sink.abort()
					return
				}
			}
		})
	}
	producers.Wait()
	accepted := time.Since(began)
	select {
	case <-sink.done:
	case <-sink.aborted:
		b.FailNow()
	case <-time.After(benchDrainTimeout):
		b.Fatalf("%d of %d deliveries arrived within %s", sink.got.Load(), sink.want, benchDrainTimeout)
	}
	elapsed := time.Since(began)
	cpu := processCPU() - cpuBefore
	b.StopTimer()

	if d := sink.duplicates.Load(); d > 0 {
		b.Logf("%d deliveries arrived twice (at-least-once); latencies count the first", d)
	}
	lat := sink.latencies()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(sink.want)/elapsed.Seconds(), "deliveries/s")
	b.ReportMetric(percentile(lat, 50).Seconds()*1000, "p50-ms")
	b.ReportMetric(percentile(lat, 99).Seconds()*1000, "p99-ms")
	b.ReportMetric(float64(b.N)/accepted.Seconds(), "accepted/s")
	b.ReportMetric(cpu.Seconds()/elapsed.Seconds(), "cpu-cores")
	b.ReportMetric(float64(cpu.Microseconds())/float64(sink.want), "cpu-us/delivery")
}

// newBenchClient is the producers' client: one keep-alive connection each.
func newBenchClient(b *testing.B) *http.Client {
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: benchProducers,
		MaxConnsPerHost:     benchProducers,
	}}
	b.Cleanup(client.CloseIdleConnections)
	return client
}

// postBatchOf posts events [from, to) as one NDJSON batch.
func postBatchOf(client *http.Client, url string, bodies *benchBodies, sink *benchSink, from, to int) error {
	var ndjson bytes.Buffer
	for seq := from; seq < to; seq++ {
		if err := json.Compact(&ndjson, bodies.body(seq)); err != nil {
			return err
		}
		ndjson.WriteByte('\n')
	}
	now := int64(time.Since(sink.epoch))
	for seq := from; seq < to; seq++ {
		sink.sent[seq].Store(now)
	}
	return postAccepted(client, url, "application/x-ndjson", &ndjson)
}

func postEvent(client *http.Client, url string, body []byte) error {
	return postAccepted(client, url, "application/json", bytes.NewReader(body))
}

// postAccepted posts body and expects a 202.
func postAccepted(client *http.Client, url, contentType string, body io.Reader) error {
	resp, err := client.Post(url, contentType, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("ingest answered %d: %.200s", resp.StatusCode, answer)
	}
	return nil
}

// processCPU is the CPU time this process (relay or forwarder, sinks and
// producers alike) has used: cpu-cores near GOMAXPROCS means the run was
// CPU-bound, well below means something waited.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)*p/100, len(sorted)-1)]
}

// benchBodies are the four seed events, each with a slot in the task title
// for the event's sequence number.
type benchBodies struct {
	prefix, suffix [][]byte
}

func newBenchBodies(b *testing.B) *benchBodies {
	bb := &benchBodies{}
	for _, typ := range []string{"task.created", "task.published", "task.status_changed", "task.deleted"} {
		seed := seedEvent(b, typ)
		const title = `"title": "`
		i := bytes.Index(seed, []byte(title))
		if i < 0 {
			b.Fatalf("seed %s has no task title to number", typ)
		}
		i += len(title)
		bb.prefix = append(bb.prefix, seed[:i:i])
		bb.suffix = append(bb.suffix, append([]byte(" "), seed[i:]...))
	}
	return bb
}

// body is a seed event numbered seq, which still validates.
func (bb *benchBodies) body(seq int) []byte {
	k := seq % len(bb.prefix)
	out := make([]byte, 0, len(bb.prefix[k])+len(benchSeqMarker)+benchSeqDigits+len(bb.suffix[k]))
	out = append(out, bb.prefix[k]...)
	out = append(out, benchSeqMarker...)
	out = fmt.Appendf(out, "%0*d", benchSeqDigits, seq)
	return append(out, bb.suffix[k]...)
}

// benchSink is the subscribers' side: one listener per subscription, all
// counting into one tally. It answers 200 to everything and records, per
// delivery, the time since its event was posted.
type benchSink struct {
	servers []*httptest.Server
	epoch   time.Time
	// sent[seq] is when event seq was posted, in nanoseconds since epoch.
	sent []atomic.Int64
	// seen[seq*subscriptions+i] is set once sink i got event seq: delivery
	// is at-least-once, and a duplicate must not stand in for a missing one.
	seen          []atomic.Bool
	subscriptions int
	duplicates    atomic.Int64
	// lat holds one latency per delivery; slot is the next free index.
	lat  []time.Duration
	slot atomic.Int64
	// got counts distinct deliveries; done is closed when it reaches want.
	got       atomic.Int64
	want      int64
	done      chan struct{}
	aborted   chan struct{}
	abortOnce sync.Once
}

func newBenchSink(b *testing.B, subscriptions, events int) *benchSink {
	s := &benchSink{
		epoch:         time.Now(),
		sent:          make([]atomic.Int64, events),
		seen:          make([]atomic.Bool, events*subscriptions),
		subscriptions: subscriptions,
		lat:           make([]time.Duration, events*subscriptions),
		want:          int64(events * subscriptions),
		done:          make(chan struct{}),
		aborted:       make(chan struct{}),
	}
	for i := range subscriptions {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.receive(b, i, w, r) }))
		b.Cleanup(srv.Close)
		s.servers = append(s.servers, srv)
	}
	return s
}

func (s *benchSink) receive(b *testing.B, sub int, w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	at := time.Since(s.epoch)
	if err != nil {
		b.Errorf("sink read: %v", err)
		s.abort()
		return
	}
	seq, ok := benchSeq(body)
	if !ok || seq >= len(s.sent) {
		b.Errorf("sink got a delivery without a known sequence number: %.80q", body)
		s.abort()
		return
	}
	w.WriteHeader(http.StatusOK)
	if s.seen[seq*s.subscriptions+sub].Swap(true) {
		s.duplicates.Add(1)
		return
	}
	s.lat[s.slot.Add(1)-1] = at - time.Duration(s.sent[seq].Load())
	if s.got.Add(1) == s.want {
		close(s.done)
	}
}

func (s *benchSink) abort() { s.abortOnce.Do(func() { close(s.aborted) }) }

func (s *benchSink) isAborted() bool {
	select {
	case <-s.aborted:
		return true
	default:
		return false
	}
}

// latencies returns the recorded latencies, sorted; call it after done.
func (s *benchSink) latencies() []time.Duration {
	lat := s.lat[:s.slot.Load()]
	slices.Sort(lat)
	return lat
}

func benchSeq(body []byte) (int, bool) {
	i := bytes.Index(body, []byte(benchSeqMarker))
	if i < 0 || len(body) < i+len(benchSeqMarker)+benchSeqDigits {
		return 0, false
	}
	i += len(benchSeqMarker)
	seq, err := strconv.Atoi(string(body[i : i+benchSeqDigits]))
	return seq, err == nil
}

// routes is one subscription per sink listener, each taking every task event.
func (s *benchSink) routes(b *testing.B) *routing.Routes {
	return compile(b, table(s.routeEntries()...))
}

// routeEntries are the routing-table entries of routes, for a table that
// adds others.
func (s *benchSink) routeEntries() []string {
	entries := make([]string, len(s.servers))
	for i, srv := range s.servers {
		entries[i] = routeYAML(fmt.Sprintf("bench/sub-%03d", i), srv.URL+"/hook", `["task.*"]`, "")
	}
	return entries
}

// startBenchRelay runs a relay on an embedded JetStream in b.TempDir().
func startBenchRelay(b *testing.B, routes *routing.Routes, _ func()) string {
	return runBenchRelay(b, benchRelayConfig(b), routes)
}

// startClusterRelay runs a relay on a fresh in-process JetStream cluster,
// with three replicas of everything.
func startClusterRelay(b *testing.B, routes *routing.Routes, _ func()) string {
	cluster := natstest.StartCluster(b, benchClusterNodes, b.TempDir())
	cfg := benchRelayConfig(b)
	cfg.Queue.NATSURL = cluster.ClientURLs()
	cfg.Queue.Replicas = benchClusterNodes
	return runBenchRelay(b, cfg, routes)
}

// benchRelayConfig is the production configuration with what a benchmark on
// one machine needs: listeners and destinations on loopback, the store in
// b.TempDir() with limits any test disk can reserve, no logs. The worker
// pool and per-subscription cap are pinned to what the forwarder gets, so
// the comparison holds if the defaults move.
func benchRelayConfig(b *testing.B) Config {
	cfg := DefaultConfig()
	cfg.Listen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Workers, cfg.MaxInFlightPerSubscription = benchWorkers, benchInFlight
	cfg.AllowDestinationCIDRs = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Log = logr.Discard()
	q := &cfg.Queue
	q.DataDir = b.TempDir()
	q.EventsMaxBytes, q.DeliveriesMaxBytes, q.DeadLettersMaxBytes = 1<<30, 1<<30, 64<<20
	return cfg
}

// runBenchRelay runs a relay with cfg and routes until the benchmark's
// cleanup and returns its ingest URL. It does not use startRelay because
// that logs through testr, which needs a *testing.T under -v.
func runBenchRelay(b *testing.B, cfg Config, routes *routing.Routes) string {
	r := New(cfg)
	r.SetRoutes(routes)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("relay stopped: %v", err)
		}
	})
	select {
	case <-r.AdminAddr():
	case err := <-done:
		b.Fatalf("relay stopped before listening: %v", err)
	}
	select {
	case a := <-r.IngestAddr():
		return "http://" + a.String() + "/v1/events"
	case err := <-done:
		b.Fatalf("relay stopped before listening: %v", err)
		return ""
	}
}

// forwarder is the baseline: it validates and routes an event like the
// relay, then hands one job per matching subscription to a pool of
// goroutines that POST it with the relay's delivery client, and answers 202
// once every job is taken. Nothing is stored: a crash loses what is in flight.
type forwarder struct {
	routes *routing.Routes
	client *delivery.Client
	jobs   chan forwardJob
	failed func(error)
}

type forwardJob struct {
	route     *routing.Route
	eventType string
	eventID   string
	body      []byte
}

func startForwarder(b *testing.B, routes *routing.Routes, abort func()) string {
	f := &forwarder{
		routes: routes,
		client: delivery.NewClient(delivery.Options{
			AllowCIDRs:      []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			MaxConnsPerHost: benchInFlight,
			UserAgent:       "involveo-webhook-relay/1",
		}),
		jobs:   make(chan forwardJob),
		failed: func(err error) { b.Errorf("forwarder: %v", err); abort() },
	}
	ctx, cancel := context.WithCancel(context.Background())
	var workers sync.WaitGroup
	for range benchWorkers {
		workers.Go(func() { f.work(ctx) })
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := newServer(http.HandlerFunc(f.ingest))
	served := serve(srv, ln, logr.Discard())
	b.Cleanup(func() {
		shutdownServer(srv, served)
		close(f.jobs)
		workers.Wait()
		cancel()
	})
	return "http://" + ln.Addr().String() + "/v1/events"
}

func (f *forwarder) ingest(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, DefaultMaxBodyBytes))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorResponse{Error: err.Error(), Field: "body"})
		return
	}
	env, err := event.Parse(body)
	if err != nil {
		var verr *event.ValidationError
		if errors.As(err, &verr) {
			writeJSON(w, http.StatusBadRequest, errorResponse{Error: verr.Message, Field: verr.Field})
			return
		}
		writeJSON(w, http.StatusBadRequest, errorResponse{Error: err.Error(), Field: "body"})
		return
	}
	id := nuid.Next()
	matches := f.routes.Match(env.Type)
	for _, route := range matches {
		f.jobs <- forwardJob{route: route, eventType: env.Type, eventID: id, body: env.Raw}
	}
	writeJSON(w, http.StatusAccepted, ingestResponse{ID: id, Deliveries: len(matches)})
}

func (f *forwarder) work(ctx context.Context) {
	for j := range f.jobs {
		res := f.client.Deliver(ctx, delivery.Request{
			URL:        j.route.URL,
			APIKey:     j.route.APIKey,
			Headers:    deliveryHeaders(j.route, deliveryID(j.eventID, j.route.ID), j.body, time.Now()),
			EventType:  j.eventType,
			DeliveryID: deliveryID(j.eventID, j.route.ID),
			Body:       j.body,
			Timeout:    j.route.Timeout,
		})
		if !res.OK() && !res.Canceled {
			f.failed(fmt.Errorf("deliver to %s: %s", j.route.ID, res.Reason))
		}
	}
}
