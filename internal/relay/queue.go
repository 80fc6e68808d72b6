package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Streams and consumers. The names are part of the on-disk state: changing
// one orphans the messages stored under the old name.
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
	fanoutAckWait = 30 * time.Second
	// drainTimeout bounds the final flush of acknowledgements at shutdown.
	drainTimeout = 10 * time.Second
)

// QueueConfig sets where JetStream runs and how much it may keep.
type QueueConfig struct {
	// DataDir holds the embedded server's file store. Ignored with NATSURL.
	DataDir string
	// NATSURL selects an external JetStream instead of the embedded server.
	NATSURL string
	// Replicas is the stream replication factor on an external cluster.
	Replicas int
	// EventsMaxBytes and EventsMaxAge bound the event log; ingest answers 503
	// when it is full rather than dropping older events.
	EventsMaxBytes int64
	EventsMaxAge   time.Duration
	// IdempotencyWindow is how long an Idempotency-Key is remembered.
	IdempotencyWindow time.Duration
	// DeliveriesMaxBytes bounds pending deliveries (first attempts and retries).
	DeliveriesMaxBytes int64
	// DeadLettersMaxBytes and DeadLettersMaxAge bound the dead-letter stream.
	DeadLettersMaxBytes int64
	DeadLettersMaxAge   time.Duration
	// DeliverAckWait is how long an attempt may hold a delivery before
	// JetStream assumes the relay died and hands it out again. It must exceed
	// the longest endpoint timeout.
	DeliverAckWait time.Duration
	// MaxAckPending bounds deliveries handed to this relay and not yet settled.
	MaxAckPending int
	// AttemptLogSize is how many attempts the delivery log keeps per
	// subscription.
	AttemptLogSize int64
}

// Queue is the relay's JetStream: the event log, the pending deliveries and
// the dead letters.
type Queue struct {
	server  *server.Server
	conn    *nats.Conn
	js      jetstream.JetStream
	events  jetstream.Stream
	fanout  jetstream.Consumer
	deliver jetstream.Consumer
	// closed is closed once the connection has drained and closed.
	closed chan struct{}
}

// OpenQueue starts the embedded server (unless cfg.NATSURL is set), connects
// and creates or updates the streams and consumers.
func OpenQueue(ctx context.Context, cfg QueueConfig, log logr.Logger) (*Queue, error) {
	q := &Queue{closed: make(chan struct{})}
	var opts []nats.Option
	url := cfg.NATSURL
	if url == "" {
		srv, err := startEmbedded(cfg.DataDir)
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
	if err := q.declare(ctx, cfg); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func startEmbedded(dataDir string) (*server.Server, error) {
	if dataDir == "" {
		return nil, errors.New("the embedded JetStream needs --data-dir (or use --nats-url)")
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "involveo-relay",
		JetStream:  true,
		StoreDir:   dataDir,
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
		Description: "one message per pending delivery attempt",
		Subjects:    []string{deliveriesSubjectPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		MaxBytes:    cfg.DeliveriesMaxBytes,
		Discard:     jetstream.DiscardNew,
		Duplicates:  deliveriesDuplicateWindow,
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
		if sc.Name == eventsStream {
			q.events = s
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
		Description:   "attempts deliveries; retries are re-published with a not-before time",
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
