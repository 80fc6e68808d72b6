package relay

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/involveo/webhook-operator/internal/syncpolicy"
)

// Streams and consumers. The names are part of the on-disk state: changing
// one orphans the messages stored under the old name.
//
// There are two durable consumers in all, fanout and deliver, however many
// subscriptions and relay replicas there are: every replica pulls from the
// same two, and JetStream hands each message to one of them. A consumer per
// subscription would not scale on a cluster. NATS maintainers advise staying
// below about 2,000 consumers, and each R3 consumer is a Raft group of its
// own (a log on three nodes, heartbeats, elections): 10,000 subscriptions
// would be 10,000 groups, 10,000 replicas on every node of a 3-node cluster,
// and 10,000 pull requests per relay replica. Here the relay costs six
// groups (four streams, two consumers) at any scale. Fairness between
// subscriptions is the relay's job instead: a delivery's subject and headers
// name its subscription, and the slots (slots.go) run each subscription
// within its adaptive window, take turns when the worker pool is full, park
// a bounded surplus in memory and give the rest back. What the
// subscriptions share is deliver's MaxAckPending, so nothing that waits is
// left in it: retries, a paused endpoint's deliveries and a slow endpoint's
// backlog wait as scheduled messages (schedule.go) and reach the consumer
// when due.
const (
	eventsStream            = "INVOLVEO_EVENTS"
	eventsSubjectPrefix     = "involveo.events."
	deliveriesStream        = "INVOLVEO_DELIVERIES"
	deliveriesSubjectPrefix = "involveo.deliveries."
	deadLettersStream       = "INVOLVEO_DEADLETTERS"
	deadLetterSubjectPrefix = "involveo.deadletters."
	fanoutConsumer          = "fanout"
	deliverConsumer         = "deliver"
)

const (
	// embeddedStartTimeout bounds how long the embedded server may take to
	// recover its file store before the relay gives up and exits.
	embeddedStartTimeout = 60 * time.Second
	// deliveriesDuplicateWindow must outlast the gap between publishing a
	// delivery and acknowledging its source message, including a crash and
	// the consumer's AckWait before redelivery, so that re-publishing after a
	// crash is recognised as a duplicate.
	deliveriesDuplicateWindow = 20 * time.Minute
	// fanoutAckWait is how long an event may stay unacknowledged in fan-out
	// before JetStream hands it out again: publishing the deliveries of one
	// event takes milliseconds, so a long wait means the relay died.
	fanoutAckWait = 10 * time.Second
	// declareTimeout bounds the start-up wait for a JetStream that cannot yet
	// create streams (a cluster still electing its leaders).
	declareTimeout = 2 * time.Minute
	// declareRetryDelay spaces those attempts.
	declareRetryDelay = time.Second
	// deliveriesCheckEvery is how often the size of the deliveries stream is
	// compared with its limit.
	deliveriesCheckEvery = time.Second
	// drainTimeout bounds the final flush of acknowledgements at shutdown.
	drainTimeout = 10 * time.Second
)

// QueueConfig sets where JetStream runs and how much it may keep.
type QueueConfig struct {
	// DataDir holds the embedded server's file store. Ignored with NATSURL.
	DataDir string
	// NATSURL selects an external JetStream instead of the embedded server.
	NATSURL string
	// Sync is how often the embedded server forces its store to disk. An
	// external JetStream's servers set their own (sync_interval).
	Sync syncpolicy.Policy
	// Replicas is the stream replication factor on an external cluster.
	Replicas int
	// CredsFile, CAFile and TLSCert/TLSKey authenticate to an external
	// JetStream: a .creds file (user JWT and seed), the CA that signed the
	// servers' certificates, and a client certificate for mutual TLS.
	CredsFile string
	CAFile    string
	TLSCert   string
	TLSKey    string
	// EventsMaxBytes and EventsMaxAge bound the event log; ingest answers 503
	// when it is full rather than dropping older events.
	EventsMaxBytes int64
	EventsMaxAge   time.Duration
	// IdempotencyWindow is how long an Idempotency-Key is remembered.
	IdempotencyWindow time.Duration
	// DeliveriesMaxBytes bounds pending deliveries (first attempts and
	// retries): above it, fan-out waits and events stay in the event log.
	DeliveriesMaxBytes int64
	// DeadLettersMaxBytes and DeadLettersMaxAge bound the dead-letter stream.
	DeadLettersMaxBytes int64
	DeadLettersMaxAge   time.Duration
	// DeliverAckWait is how long a relay may go without reporting progress
	// on a delivery it holds before JetStream assumes it died and hands the
	// delivery out again.
	DeliverAckWait time.Duration
	// MaxAckPending bounds the messages each shared consumer has handed out
	// to all relays together and that are not yet settled.
	MaxAckPending int
	// AttemptLogSize is how many delivery log messages are kept per
	// subscription. Each holds the attempts that finished within one flush
	// (attemptFlushEvery), so at least this many attempts are kept, and
	// more at high rates.
	AttemptLogSize int64
}

// Queue is the relay's JetStream: the event log, the pending deliveries and
// the dead letters.
type Queue struct {
	server     *server.Server
	conn       *nats.Conn
	js         jetstream.JetStream
	events     jetstream.Stream
	deliveries jetstream.Stream
	// deliveriesFull is set while the deliveries stream holds more than
	// DeliveriesMaxBytes; fan-out waits meanwhile.
	deliveriesFull atomic.Bool
	fanout         jetstream.Consumer
	deliver        jetstream.Consumer
	// closed is closed once the connection has drained and closed.
	closed chan struct{}
}

// OpenQueue starts the embedded server (unless cfg.NATSURL is set), connects
// and creates or updates the streams and consumers.
func OpenQueue(ctx context.Context, cfg QueueConfig, log logr.Logger) (*Queue, error) {
	q := &Queue{closed: make(chan struct{})}
	opts, err := externalOptions(cfg)
	if err != nil {
		return nil, err
	}
	url := cfg.NATSURL
	if url == "" {
		srv, err := startEmbedded(cfg.DataDir, cfg.Sync)
		if err != nil {
			return nil, err
		}
		q.server = srv
		opts = append(opts, nats.InProcessServer(srv))
		url = nats.DefaultURL
	}
	opts = append(opts,
		nats.Name("involveo-relay"),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Error(err, "disconnected from NATS")
		}),
		nats.ReconnectHandler(func(*nats.Conn) { log.Info("reconnected to NATS") }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error(err, "NATS connection error", "subscription", subject)
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(q.closed) }),
	)
	conn, err := nats.Connect(url, opts...)
	if err != nil {
		q.Close()
		return nil, fmt.Errorf("connect to NATS: %w", err)
	}
	q.conn = conn
	if q.js, err = jetstream.New(conn); err != nil {
		q.Close()
		return nil, fmt.Errorf("open JetStream: %w", err)
	}
	if err := q.declareWithRetry(ctx, cfg, log); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

// errNoSchedules is a JetStream too old for the relay; waiting does not help.
var errNoSchedules = errors.New("the JetStream server does not support message schedules (allow_msg_schedules): the relay needs nats-server 2.12 or later")

// declareWithRetry declares the streams and consumers, retrying while a
// JetStream cluster is still electing leaders or busy: relays and NATS pods
// often start together, and a relay that gave up at once would crash-loop.
func (q *Queue) declareWithRetry(ctx context.Context, cfg QueueConfig, log logr.Logger) error {
	deadline := time.Now().Add(declareTimeout)
	for {
		err := q.declare(ctx, cfg)
		if err == nil || errors.Is(err, errNoSchedules) || time.Now().After(deadline) {
			return err
		}
		log.Info("JetStream not ready to declare the streams; retrying", "error", err.Error())
		select {
		case <-ctx.Done():
			return err
		case <-time.After(declareRetryDelay):
		}
	}
}

// externalOptions turns the credentials and TLS settings into connection
// options. They apply to an external JetStream only: the embedded server
// takes in-process connections and has no users.
func externalOptions(cfg QueueConfig) ([]nats.Option, error) {
	if cfg.NATSURL == "" {
		if cfg.CredsFile != "" || cfg.CAFile != "" || cfg.TLSCert != "" || cfg.TLSKey != "" {
			return nil, errors.New("NATS credentials and TLS settings need an external JetStream (--nats-url)")
		}
		return nil, nil
	}
	if cfg.Sync != (syncpolicy.Policy{}) {
		return nil, errors.New("--sync-interval applies to the embedded JetStream; an external one syncs as its servers' sync_interval says")
	}
	var opts []nats.Option
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.CAFile))
	}
	switch {
	case cfg.TLSCert != "" && cfg.TLSKey != "":
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	case cfg.TLSCert != "" || cfg.TLSKey != "":
		return nil, errors.New("a NATS client certificate needs both --nats-tls-cert and --nats-tls-key")
	}
	return opts, nil
}

func startEmbedded(dataDir string, sync syncpolicy.Policy) (*server.Server, error) {
	if dataDir == "" {
		return nil, errors.New("the embedded JetStream needs --data-dir (or use --nats-url)")
	}
	srv, err := server.NewServer(&server.Options{
		ServerName:   "involveo-relay",
		JetStream:    true,
		StoreDir:     dataDir,
		SyncAlways:   sync.Always,
		SyncInterval: sync.Interval,
		// Only the relay process talks to the embedded server.
		DontListen: true,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return nil, fmt.Errorf("configure embedded NATS: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(embeddedStartTimeout) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded NATS not ready after %s", embeddedStartTimeout)
	}
	return srv, nil
}

func (q *Queue) declare(ctx context.Context, cfg QueueConfig) error {
	replicas := max(cfg.Replicas, 1)
	if q.server != nil {
		replicas = 1
	}
	streams := []jetstream.StreamConfig{{
		Name:        eventsStream,
		Description: "Involveo events as received, kept for fan-out and audit",
		Subjects:    []string{eventsSubjectPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		MaxBytes:    cfg.EventsMaxBytes,
		MaxAge:      cfg.EventsMaxAge,
		Discard:     jetstream.DiscardNew,
		Duplicates:  cfg.IdempotencyWindow,
	}, {
		Name:        deliveriesStream,
		Description: "one message per pending delivery attempt, and the scheduled ones that wait for their time",
		Subjects:    []string{deliveriesSubjectPrefix + ">", scheduledSubjectPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		// Scheduled messages (schedule.go) rule out DiscardNew, and DiscardOld
		// with a size limit would drop pending deliveries. So the stream has
		// no limit of its own: fan-out stops adding to it above
		// DeliveriesMaxBytes (watchDeliveries), and the event log, which does
		// refuse when full, takes up the slack.
		AllowMsgSchedules: true,
		Discard:           jetstream.DiscardOld,
		Duplicates:        deliveriesDuplicateWindow,
	}, {
		Name:        deadLettersStream,
		Description: "deliveries that failed their last attempt, with the reason",
		Subjects:    []string{deadLetterSubjectPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		MaxBytes:    cfg.DeadLettersMaxBytes,
		MaxAge:      cfg.DeadLettersMaxAge,
		// Dead letters are the record of last resort: when full, drop the
		// oldest rather than refuse a new one.
		Discard: jetstream.DiscardOld,
	}, {
		Name:              attemptsStream,
		Description:       "the delivery log: the latest attempts per subscription, no bodies or secrets",
		Subjects:          []string{attemptsSubjectPrefix + ">"},
		Retention:         jetstream.LimitsPolicy,
		MaxMsgsPerSubject: max(cfg.AttemptLogSize, 1),
		MaxAge:            attemptsMaxAge,
		Discard:           jetstream.DiscardOld,
	}}
	for _, sc := range streams {
		sc.Storage = jetstream.FileStorage
		sc.Replicas = replicas
		s, err := q.js.CreateOrUpdateStream(ctx, sc)
		if err != nil {
			return fmt.Errorf("declare stream %s: %w", sc.Name, err)
		}
		// A server that predates message schedules ignores the setting and
		// stores scheduled copies as plain messages that nothing reads: every
		// retry would be lost once its original is acknowledged.
		if sc.AllowMsgSchedules && !s.CachedInfo().Config.AllowMsgSchedules {
			return fmt.Errorf("declare stream %s: %w", sc.Name, errNoSchedules)
		}
		switch sc.Name {
		case eventsStream:
			q.events = s
		case deliveriesStream:
			q.deliveries = s
		}
	}
	var err error
	q.fanout, err = q.js.CreateOrUpdateConsumer(ctx, eventsStream, jetstream.ConsumerConfig{
		Durable:       fanoutConsumer,
		Description:   "turns each event into one delivery per matching subscription",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       fanoutAckWait,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxAckPending: cfg.MaxAckPending,
		Replicas:      replicas,
	})
	if err != nil {
		return fmt.Errorf("declare consumer %s: %w", fanoutConsumer, err)
	}
	q.deliver, err = q.js.CreateOrUpdateConsumer(ctx, deliveriesStream, jetstream.ConsumerConfig{
		Durable:       deliverConsumer,
		Description:   "attempts deliveries; scheduled ones reach it when due",
		FilterSubject: deliveriesSubjectPrefix + ">",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.DeliverAckWait,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxAckPending: cfg.MaxAckPending,
		Replicas:      replicas,
	})
	if err != nil {
		return fmt.Errorf("declare consumer %s: %w", deliverConsumer, err)
	}
	return nil
}

// watchDeliveries keeps deliveriesFull up to date until ctx is done. The
// bound is checked every deliveriesCheckEvery, so it may be overshot by what
// fan-out stores in that time.
func (q *Queue) watchDeliveries(ctx context.Context, maxBytes int64, log logr.Logger) {
	t := time.NewTicker(deliveriesCheckEvery)
	defer t.Stop()
	for {
		info, err := q.deliveries.Info(ctx)
		if err == nil && maxBytes > 0 {
			full := info.State.Bytes > uint64(maxBytes)
			if q.deliveriesFull.Swap(full) != full {
				log.Info("pending deliveries over their size limit: fan-out waits", "full", full,
					"bytes", info.State.Bytes, "limit", maxBytes)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Connected reports whether the connection to JetStream is up.
func (q *Queue) Connected() bool { return q.conn != nil && q.conn.IsConnected() }

// Close drains the connection, so acknowledgements in flight reach the
// server, then stops the embedded server, which flushes its file store.
func (q *Queue) Close() {
	if q.conn != nil {
		if err := q.conn.Drain(); err == nil {
			select {
			case <-q.closed:
			case <-time.After(drainTimeout):
			}
		}
	}
	if q.server != nil {
		q.server.Shutdown()
		q.server.WaitForShutdown()
	}
}
