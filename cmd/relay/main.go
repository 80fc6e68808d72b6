// Command relay is the data plane: it receives Involveo events, stores them in
// JetStream and delivers them to the subscriptions of its routing table.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/involveo/webhook-operator/internal/delivery"
	"github.com/involveo/webhook-operator/internal/logging"
	"github.com/involveo/webhook-operator/internal/relay"
	"github.com/involveo/webhook-operator/internal/routing"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
}

type source interface {
	Run(ctx context.Context) error
}

func run() error {
	cfg := relay.DefaultConfig()
	var (
		configFile  string
		credentials string
		kubeconfig  string
		namespace   string
		routesCM    string
		credsSecret string
		tokenFile   string
		allowCIDRs  string
		logLevel    string
	)
	flag.StringVar(&cfg.Listen, "listen", cfg.Listen, "address for event ingest (POST /v1/events)")
	flag.StringVar(&cfg.AdminListen, "admin-listen", cfg.AdminListen, "address for /healthz, /readyz, /metrics and /v1/subscriptions")
	flag.StringVar(&cfg.Queue.DataDir, "data-dir", "", "JetStream file storage of the embedded NATS server")
	flag.StringVar(&cfg.Queue.NATSURL, "nats-url", "", "external JetStream URL; no embedded server is started then")
	flag.Var(&cfg.Queue.Sync, "sync-interval", "how often the embedded JetStream flushes its store to disk: \"always\" (every write, before the 202) or a duration; JetStream's default (2m) when empty. A process crash loses nothing either way; a lost machine loses up to one interval")
	flag.IntVar(&cfg.Queue.Replicas, "nats-replicas", cfg.Queue.Replicas, "stream and consumer replicas on an external JetStream cluster (the embedded server always uses 1)")
	flag.StringVar(&cfg.Queue.CredsFile, "nats-creds", "", "with --nats-url: NATS credentials file (user JWT and seed)")
	flag.StringVar(&cfg.Queue.CAFile, "nats-ca", "", "with --nats-url: CA certificates (PEM) that signed the NATS servers' certificates")
	flag.StringVar(&cfg.Queue.TLSCert, "nats-tls-cert", "", "with --nats-url: client certificate (PEM) for mutual TLS; needs --nats-tls-key")
	flag.StringVar(&cfg.Queue.TLSKey, "nats-tls-key", "", "with --nats-url: private key (PEM) of --nats-tls-cert")
	flag.StringVar(&configFile, "config", "", "standalone routing file (YAML); otherwise read the Kubernetes objects")
	flag.StringVar(&credentials, "credentials-file", "", "with --config: YAML map or directory of files holding the values of secretKey references")
	flag.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig for reading the routing objects; in-cluster config when empty")
	flag.StringVar(&namespace, "namespace", defaultNamespace(), "namespace of the routing ConfigMap and credentials Secret")
	flag.StringVar(&routesCM, "routes-configmap", routing.ConfigMapName, "name of the routing ConfigMap")
	flag.StringVar(&credsSecret, "credentials-secret", routing.CredentialsSecretName, "name of the credentials Secret")
	flag.StringVar(&tokenFile, "ingest-token-file", "", "file holding the bearer token ingest requires; no token when empty")
	flag.StringVar(&allowCIDRs, "allow-destination-cidrs", "", "comma-separated CIDRs deliveries may reach although private, loopback or link-local")
	flag.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", cfg.MaxBodyBytes, "largest event accepted on ingest")
	flag.IntVar(&cfg.Workers, "workers", cfg.Workers, "concurrent delivery attempts")
	flag.IntVar(&cfg.MaxInFlightPerSubscription, "max-in-flight-per-subscription", cfg.MaxInFlightPerSubscription, "concurrent attempts a subscription may run unless its route sets maxInFlight")
	flag.IntVar(&cfg.Replicas, "replicas", cfg.Replicas, "relay replicas sharing the work; per-subscription rate limits and the parking budget (--max-ack-pending) are divided by it")
	flag.Int64Var(&cfg.Queue.EventsMaxBytes, "events-max-bytes", cfg.Queue.EventsMaxBytes, "event log size limit; ingest answers 503 when full")
	flag.DurationVar(&cfg.Queue.EventsMaxAge, "events-max-age", cfg.Queue.EventsMaxAge, "how long events are kept in the event log")
	flag.DurationVar(&cfg.Queue.IdempotencyWindow, "idempotency-window", cfg.Queue.IdempotencyWindow, "how long an Idempotency-Key is remembered")
	flag.Int64Var(&cfg.Queue.DeliveriesMaxBytes, "deliveries-max-bytes", cfg.Queue.DeliveriesMaxBytes, "pending deliveries size limit: above it, fan-out waits and events stay in the event log")
	flag.Int64Var(&cfg.Queue.DeadLettersMaxBytes, "dead-letters-max-bytes", cfg.Queue.DeadLettersMaxBytes, "dead-letter stream size limit (oldest dropped first)")
	flag.DurationVar(&cfg.Queue.DeadLettersMaxAge, "dead-letters-max-age", cfg.Queue.DeadLettersMaxAge, "how long dead letters are kept")
	flag.DurationVar(&cfg.Queue.DeliverAckWait, "deliver-ack-wait", cfg.Queue.DeliverAckWait, "how long a relay may stop answering before the deliveries it holds go to another; it reports progress every quarter of this while it parks or attempts them")
	flag.IntVar(&cfg.Queue.MaxAckPending, "max-ack-pending", cfg.Queue.MaxAckPending, "deliveries handed out and not yet settled, per consumer")
	flag.Int64Var(&cfg.Queue.AttemptLogSize, "attempt-log-size", cfg.Queue.AttemptLogSize, "delivery log entries kept per subscription; each holds the attempts finished within 100ms, so at least this many attempts")
	flag.IntVar(&cfg.Breaker.AfterDeadLetters, "pause-after-dead-letters", cfg.Breaker.AfterDeadLetters, "pause an endpoint after this many dead letters in a row (0: never)")
	flag.DurationVar(&cfg.Breaker.AfterFailing, "pause-after-failing", cfg.Breaker.AfterFailing, "pause an endpoint that has not succeeded for this long (0: never)")
	flag.DurationVar(&cfg.Breaker.ProbeEvery, "pause-probe-interval", cfg.Breaker.ProbeEvery, "how often one held delivery tests a paused endpoint")
	flag.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "wait for running attempts at shutdown before handing them back")
	flag.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	flag.Parse()

	log, err := logging.New(logLevel)
	if err != nil {
		return err
	}
	cfg.Log = log
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.AllowDestinationCIDRs, err = delivery.ParseCIDRs(allowCIDRs); err != nil {
		return fmt.Errorf("--allow-destination-cidrs: %w", err)
	}
	if tokenFile != "" {
		token, err := os.ReadFile(tokenFile)
		if err != nil {
			return fmt.Errorf("--ingest-token-file: %w", err)
		}
		if cfg.IngestToken = []byte(strings.TrimSpace(string(token))); len(cfg.IngestToken) == 0 {
			return errors.New("--ingest-token-file is empty")
		}
	}

	r := relay.New(cfg)
	var src source
	if configFile != "" {
		src = &routing.FileSource{ConfigPath: configFile, CredentialsPath: credentials, Log: log, OnChange: r.SetRoutes}
	} else {
		restCfg, err := restConfig(kubeconfig)
		if err != nil {
			return err
		}
		cs, err := kubernetes.NewForConfig(restCfg)
		if err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
		src = &routing.KubernetesSource{Client: cs, Namespace: namespace, ConfigMapName: routesCM,
			SecretName: credsSecret, Log: log, OnChange: r.SetRoutes}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return src.Run(ctx) })
	g.Go(func() error { return r.Run(ctx) })
	return g.Wait()
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --config, no --kubeconfig and not in a cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig: %w", err)
	}
	return cfg, nil
}

// defaultNamespace is the pod's own namespace in a cluster, else the
// operator's default.
func defaultNamespace() string {
	if ns, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
		return strings.TrimSpace(string(ns))
	}
	return "involveo-webhooks"
}
