// Package relay is the data plane: it takes Involveo events over HTTP, stores
// them in JetStream, fans each out to the matching subscriptions and delivers
// them with retries and dead letters.
package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/involveo/webhook-operator/internal/delivery"
	"github.com/involveo/webhook-operator/internal/health"
	"github.com/involveo/webhook-operator/internal/routing"
)

// Server limits for the ingest and admin listeners.
const (
	// readHeaderTimeout stops slow-loris clients from holding connections.
	readHeaderTimeout = 5 * time.Second
	// readTimeout covers a 1 MiB body on a slow link.
	readTimeout = 30 * time.Second
	// writeTimeout covers the JetStream write (storeTimeout) and the answer.
	writeTimeout = 30 * time.Second
	// idleTimeout closes idle keep-alive connections.
	idleTimeout = 120 * time.Second
	// maxHeaderBytes is far above what the producer sends and far below
	// Go's 1 MiB default.
	maxHeaderBytes = 32 << 10
	// fetchWait bounds one pull request: how long a relay waits for work
	// before asking again, and so how soon it notices that the leader of a
	// consumer it pulls from is gone, instead of after the 30 s default.
	fetchWait = 500 * time.Millisecond
	// fetchRetryDelay spaces pull requests that failed (no leader yet,
	// reconnecting).
	fetchRetryDelay = 250 * time.Millisecond
	// fetchCheckEvery is how many failed pulls in a row make the relay ask
	// whether the consumer still exists.
	fetchCheckEvery = 8
	// fanoutWorkers is how many events are fanned out at once; each waits for
	// JetStream to store its deliveries, so a few overlap those waits.
	fanoutWorkers = 4
	// fanoutPull is how many events a relay pulls at once: large batches
	// save pull requests, and 16 per worker still leaves a 1,000-way fan-out
	// per event well within fanoutAckWait.
	fanoutPull = 16 * fanoutWorkers
)

// Defaults of cmd/relay's flags that tests and benchmarks share.
const (
	// DefaultDeliverAckWait is how soon the deliveries a crashed relay held
	// go to the others. A live relay reports progress on what it holds every
	// quarter of it (reportProgress), so it need not outlast the longest attempt:
	// only a relay that stopped answering for this long loses its deliveries
	// to another, and a delivery may then be attempted twice.
	DefaultDeliverAckWait = time.Minute
	// DefaultMaxAckPending bounds the deliveries handed out and not yet
	// settled, across all relays sharing the consumer; parked deliveries
	// count too.
	DefaultMaxAckPending = 20000
)

// DefaultConfig is the configuration of cmd/relay with every flag at its
// default; tests start from it too, so they run what production runs.
func DefaultConfig() Config {
	return Config{
		Listen:                     ":8080",
		AdminListen:                ":9090",
		MaxBodyBytes:               DefaultMaxBodyBytes,
		Workers:                    128,
		MaxInFlightPerSubscription: 16,
		Replicas:                   1,
		ShutdownTimeout:            25 * time.Second,
		Breaker:                    BreakerConfig{AfterDeadLetters: 500, AfterFailing: 5 * 24 * time.Hour, ProbeEvery: 10 * time.Minute},
		Queue: QueueConfig{
			Replicas:            3,
			EventsMaxBytes:      1 << 30,
			EventsMaxAge:        7 * 24 * time.Hour,
			IdempotencyWindow:   time.Hour,
			DeliveriesMaxBytes:  4 << 30,
			DeadLettersMaxBytes: 1 << 30,
			DeadLettersMaxAge:   30 * 24 * time.Hour,
			DeliverAckWait:      DefaultDeliverAckWait,
			MaxAckPending:       DefaultMaxAckPending,
			AttemptLogSize:      200,
		},
	}
}

// Config is the relay's configuration; cmd/relay fills it from flags.
type Config struct {
	Listen      string
	AdminListen string
	Queue       QueueConfig
	// MaxBodyBytes is the ingest size limit.
	MaxBodyBytes int64
	// IngestToken, when set, is the bearer token ingest requires.
	IngestToken []byte
	// Workers is the number of concurrent delivery attempts.
	Workers int
	// MaxInFlightPerSubscription caps the attempts one subscription may run
	// at once, so a slow endpoint cannot starve the others.
	MaxInFlightPerSubscription int
	// AllowDestinationCIDRs lets deliveries reach otherwise refused ranges.
	AllowDestinationCIDRs []netip.Prefix
	// Breaker sets when a failing endpoint is paused.
	Breaker BreakerConfig
	// Replicas is how many relays share the work; per-subscription rates are
	// divided by it.
	Replicas int
	// ShutdownTimeout bounds the wait for running attempts at shutdown.
	ShutdownTimeout time.Duration
	Log             logr.Logger
}

// Validate checks the settings a relay cannot run without, naming the
// flag at fault.
func (c Config) Validate() error {
	for _, check := range []struct {
		ok   bool
		flag string
		want string
	}{
		{c.Workers >= 1, "--workers", "at least 1"},
		{c.MaxInFlightPerSubscription >= 1, "--max-in-flight-per-subscription", "at least 1"},
		{c.Replicas >= 1, "--replicas", "at least 1"},
		{c.Queue.MaxAckPending >= 1, "--max-ack-pending", "at least 1"},
		{c.Queue.DeliverAckWait >= time.Second, "--deliver-ack-wait", "at least 1s"},
	} {
		if !check.ok {
			return fmt.Errorf("%s must be %s", check.flag, check.want)
		}
	}
	return nil
}

// Relay is one relay process.
type Relay struct {
	cfg     Config
	log     logr.Logger
	queue   *Queue
	client  *delivery.Client
	stats   *stats
	metrics *metrics
	slots   *slots
	inHand  *inHand
	// attemptLog batches the delivery log.
	attemptLog *attemptLog
	// attempts counts the goroutines running attempts; settling those
	// waiting for JetStream to store a delivery moved out of the way.
	attempts sync.WaitGroup
	settling sync.WaitGroup
	limiters *limiters
	breaker  *breaker
	routes   atomic.Pointer[routing.Routes]
	// queueReady is set once queue is assigned; the admin server runs before
	// that and must not touch the queue until it is.
	queueReady atomic.Bool
	loaded     atomic.Bool
	// firstLoad is closed by the first SetRoutes.
	firstLoad     chan struct{}
	firstLoadOnce sync.Once
	instance      string
	started       time.Time

	ingestServer *http.Server
	adminServer  *http.Server
	ingestAddr   chan net.Addr
	adminAddr    chan net.Addr
}

// New builds a relay; Run starts it.
func New(cfg Config) *Relay {
	r := &Relay{
		cfg:        cfg,
		log:        cfg.Log,
		stats:      newStats(),
		attemptLog: newAttemptLog(),
		inHand:     newInHand(),
		slots:      newSlots(cfg.Workers, cfg.MaxInFlightPerSubscription, cfg.Queue.MaxAckPending, cfg.Replicas),
		limiters:   newLimiters(cfg.Replicas),
		breaker:    newBreaker(cfg.Breaker),
		firstLoad:  make(chan struct{}),
		instance:   nuid.Next(),
		started:    time.Now().UTC(),
		ingestAddr: make(chan net.Addr, 1),
		adminAddr:  make(chan net.Addr, 1),
		client: delivery.NewClient(delivery.Options{
			AllowCIDRs: cfg.AllowDestinationCIDRs,
			// Subscriptions set their own in-flight caps; the per-host pool
			// must not be the tighter limit.
			MaxConnsPerHost: routing.MaxMaxInFlight,
			UserAgent:       "involveo-webhook-relay/1",
		}),
	}
	r.metrics = newMetrics(func() float64 { return float64(r.stats.pendingTotal()) })
	r.metrics.registry.MustRegister(relayCollector{r})
	return r
}

// SetRoutes swaps in a new routing table. In-flight attempts finish with the
// route they started with; every later attempt reads the new one.
func (r *Relay) SetRoutes(routes *routing.Routes) {
	r.routes.Store(routes)
	r.slots.forget(func(id string) bool { _, ok := routes.Get(id); return ok })
	r.loaded.Store(true)
	r.firstLoadOnce.Do(func() { close(r.firstLoad) })
	r.metrics.setRevision(routes.Revision)
	// Series that exist from the start let increase() see the first failure.
	for _, route := range routes.All() {
		r.metrics.deliveries.WithLabelValues(route.ID, "success")
		r.metrics.deliveries.WithLabelValues(route.ID, "failure")
		r.metrics.deadLetters.WithLabelValues(route.ID)
	}
}

// IngestAddr and AdminAddr return the bound addresses once listening
// (useful with port 0).
func (r *Relay) IngestAddr() <-chan net.Addr { return r.ingestAddr }
func (r *Relay) AdminAddr() <-chan net.Addr  { return r.adminAddr }

// Run serves until ctx is done, then shuts down in order: stop taking events,
// stop handing out deliveries, let running attempts finish (or hand them back
// at ShutdownTimeout), flush acknowledgements, stop the store.
func (r *Relay) Run(ctx context.Context) error {
	ingestLn, err := net.Listen("tcp", r.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen for ingest: %w", err)
	}
	adminLn, err := net.Listen("tcp", r.cfg.AdminListen)
	if err != nil {
		_ = ingestLn.Close()
		return fmt.Errorf("listen for admin: %w", err)
	}
	r.adminServer = newServer(r.adminHandler())
	adminDone := serve(r.adminServer, adminLn, r.log)
	r.adminAddr <- adminLn.Addr()
	defer shutdownServer(r.adminServer, adminDone)

	q, err := OpenQueue(ctx, r.cfg.Queue, r.log)
	if err != nil {
		_ = ingestLn.Close()
		return fmt.Errorf("open queue: %w", err)
	}
	r.queue = q
	r.queueReady.Store(true)
	defer q.Close()

	if err := r.waitForRoutes(ctx); err != nil {
		_ = ingestLn.Close()
		return nil
	}

	workCtx, stopWork := context.WithCancel(context.Background())
	defer stopWork()
	var wg sync.WaitGroup
	events := make(chan jetstream.Msg)
	stopPulling := make(chan struct{})
	for range fanoutWorkers {
		wg.Go(func() {
			for msg := range events {
				r.fanout(workCtx, stopPulling, msg)
			}
		})
	}
	wg.Go(func() { r.sweepParked(workCtx) })
	wg.Go(func() { r.reportProgress(workCtx) })
	wg.Go(func() { r.flushAttempts(workCtx) })
	wg.Go(func() { q.watchDeliveries(workCtx, r.cfg.Queue.DeliveriesMaxBytes, r.log) })
	pumpErr := make(chan error, 2)
	var pumps sync.WaitGroup
	pumps.Go(func() {
		if err := r.pump(stopPulling, q.fanout, fanoutConsumer, fanoutPull, nil, func(m jetstream.Msg) { events <- m }); err != nil {
			pumpErr <- err
		}
		close(events)
	})
	pumps.Go(func() {
		if err := r.pump(stopPulling, q.deliver, deliverConsumer, 2*r.cfg.Workers, r.inHand, func(m jetstream.Msg) { r.dispatch(workCtx, m) }); err != nil {
			pumpErr <- err
		}
	})

	r.ingestServer = newServer(r.ingestHandler())
	ingestDone := serve(r.ingestServer, ingestLn, r.log)
	r.ingestAddr <- ingestLn.Addr()
	r.log.Info("relay started", "listen", ingestLn.Addr().String(), "admin", adminLn.Addr().String(),
		"instance", r.instance)

	var runErr error
	select {
	case <-ctx.Done():
		r.log.Info("shutting down")
	case runErr = <-pumpErr:
		// Taking events without ever delivering them would be worse than a
		// restart, which recreates the consumers.
		r.log.Error(runErr, "stopped taking work from JetStream; shutting down so the relay restarts")
	}
	shutdownServer(r.ingestServer, ingestDone)
	// The pumps finish the batch in hand: messages already pulled are still
	// dispatched (or handed back), instead of waiting out their AckWait.
	close(stopPulling)
	finished := make(chan struct{})
	go func() {
		// The pumps end once the drained messages are dispatched; only then
		// can no new attempt start.
		pumps.Wait()
		r.attempts.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-time.After(r.cfg.ShutdownTimeout):
		r.log.Info("shutdown timeout: handing running attempts back to the queue")
		stopWork()
		<-finished
	}
	stopWork()
	wg.Wait()
	// Nothing moves deliveries any more; let the last stores settle before
	// the connection drains.
	r.settling.Wait()
	return runErr
}

// pump fetches batches from a consumer and hands every message to handle
// until stop is closed, finishing the batch in hand. Each pull request
// lives at most fetchWait, so a consumer whose leader moved or died (a
// JetStream node went away) is asked again within seconds. Failures that a
// new leader or a reconnect cures are retried after fetchRetryDelay; a
// consumer that is gone or a closed connection ends the pump, and with it
// the relay, whose restart declares the consumers again.
//
// Fetch, not the Messages iterator: under a saturating fan-out the
// iterator's count of outstanding messages drifted from the server's (no
// pull request left on the server, the client waiting for messages it had
// asked for), and only the missed-heartbeat timeout ended each stall.
func (r *Relay) pump(stop <-chan struct{}, c jetstream.Consumer, name string, batch int, held *inHand, handle func(jetstream.Msg)) error {
	failures := 0
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		got, err := pull(c, batch, held, handle)
		if err == nil || got > 0 {
			failures = 0
			continue
		}
		if consumerGone(err) {
			return fmt.Errorf("consume %s: %w", name, err)
		}
		// A missing consumer answers "no responders", as does one whose
		// leader is being elected: ask JetStream which it is now and then.
		if failures++; failures%fetchCheckEvery == 0 {
			ctx, cancel := context.WithTimeout(context.Background(), fetchWait)
			_, infoErr := c.Info(ctx)
			cancel()
			if consumerGone(infoErr) {
				return fmt.Errorf("consume %s: %w", name, infoErr)
			}
		}
		r.log.V(1).Info("pull request failed; asking again", "consumer", name, "error", err.Error())
		select {
		case <-stop:
			return nil
		case <-time.After(fetchRetryDelay):
		}
	}
}

// pull fetches one batch and hands its messages to handle. With held, each
// message is in hand from its arrival until handle returns, so the ones
// queued behind a handler that waits are reported in progress too. The
// error is the request's or the batch's; running out of time is not one.
func pull(c jetstream.Consumer, batch int, held *inHand, handle func(jetstream.Msg)) (int, error) {
	b, err := c.Fetch(batch, jetstream.FetchMaxWait(fetchWait))
	if err != nil {
		return 0, err
	}
	got := 0
	if held == nil {
		for msg := range b.Messages() {
			handle(msg)
			got++
		}
	} else {
		type arrival struct {
			msg     jetstream.Msg
			release func()
		}
		// Buffered for the whole batch, so the reader never blocks.
		arrived := make(chan arrival, batch)
		go func() {
			for msg := range b.Messages() {
				arrived <- arrival{msg, held.hold(msg)}
			}
			close(arrived)
		}()
		for a := range arrived {
			handle(a.msg)
			a.release()
			got++
		}
	}
	if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
		return got, err
	}
	return got, nil
}

func consumerGone(err error) bool {
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
		errors.Is(err, nats.ErrConnectionClosed)
}

// waitForRoutes blocks until the first routing table is loaded: dispatching
// against an empty table would cancel every pending delivery.
func (r *Relay) waitForRoutes(ctx context.Context) error {
	if !r.loaded.Load() {
		r.log.Info("waiting for the routing table")
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-r.firstLoad:
		return nil
	}
}

func (r *Relay) ingestHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/events", r.handleIngest)
	mux.HandleFunc(batchPath, r.handleIngestBatch)
	return mux
}

func (r *Relay) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case !r.queueReady.Load() || !r.queue.Connected():
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "queue not connected"})
		case !r.loaded.Load():
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "no routing table loaded"})
		default:
			writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.metrics.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET "+health.Path, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, r.Health())
	})
	mux.HandleFunc("GET "+health.AttemptsPath, r.handleAttempts)
	mux.HandleFunc("GET "+health.DeadLettersPath, r.handleDeadLetters)
	mux.HandleFunc("POST "+health.RedeliverPath, r.handleRedeliver)
	mux.HandleFunc("POST "+health.TestPath, r.handleTest)
	return mux
}

// Health is the report served on GET /v1/subscriptions.
func (r *Relay) Health() health.Report {
	routes := r.routes.Load()
	rep := health.Report{
		Instance:      r.instance,
		StartTime:     r.started,
		Loaded:        r.loaded.Load(),
		Subscriptions: r.stats.report(routes),
	}
	if routes != nil {
		rep.Revision = routes.Revision
	}
	for i := range rep.Subscriptions {
		rep.Subscriptions[i].Paused = r.breaker.pause(rep.Subscriptions[i].ID)
	}
	return rep
}

func newServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
}

func serve(srv *http.Server, ln net.Listener, log logr.Logger) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(err, "HTTP server stopped")
		}
	}()
	return done
}

func shutdownServer(srv *http.Server, done <-chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	_ = srv.Shutdown(ctx)
	<-done
}
