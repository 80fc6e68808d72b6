// Command manager is the control plane: it renders WebhookSubscriptions into the shared
// relay's routing objects, runs the relay, and writes each subscription's status from
// the relay's delivery health.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/controller"
	"github.com/involveo/webhook-operator/internal/logging"
)

// leaderElectionID names the Lease replicas of the manager compete for.
const leaderElectionID = "webhook-manager.webhooks.involveo.io"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		cfg                              controller.Config
		metricsAddr, probeAddr           string
		watchNamespaces, storage, logLvl string
		leaderElect                      bool
		replicas                         int
	)
	// --kubeconfig is registered by controller-runtime's config package.
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "address of the metrics endpoint; 0 disables it")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	flag.BoolVar(&leaderElect, "leader-elect", false, "elect a leader, so that only one of several manager replicas is active")
	flag.StringVar(&cfg.Namespace, "namespace", defaultNamespace(), "operator namespace: the relay and its routing objects live here")
	flag.StringVar(&watchNamespaces, "watch-namespaces", "", "comma-separated namespaces whose WebhookSubscriptions are served; all when empty")
	flag.StringVar(&cfg.Relay.Image, "relay-image", defaultRelayImage(), "relay image; $RELAY_IMAGE when set, which the shipped manager Deployment sets to its own image")
	flag.IntVar(&replicas, "relay-replicas", 1, "relay pods; more than 1 needs --nats-url")
	flag.StringVar(&storage, "relay-storage-size", "", "size of a PersistentVolumeClaim for the embedded JetStream store (e.g. 10Gi); an emptyDir when empty")
	flag.StringVar(&cfg.Relay.SyncInterval, "relay-sync-interval", "", "how often the embedded JetStream flushes to disk: \"always\" (every write, survives losing the node's page cache) or a duration; JetStream's default (2m) when empty")
	flag.StringVar(&cfg.Relay.NATSURL, "nats-url", "", "external JetStream URL passed to the relay; the relay embeds a server when empty")
	flag.IntVar(&cfg.Relay.NATSReplicas, "nats-replicas", 0, "stream replicas on the external JetStream, passed to the relay (its default is 3; use 1 for a single-node server)")
	flag.StringVar(&cfg.Relay.NATSCredsSecret, "nats-creds-secret", "", "Secret in the operator namespace whose key nats.creds is the relay's NATS credentials file")
	flag.StringVar(&cfg.Relay.NATSCASecret, "nats-ca-secret", "", "Secret in the operator namespace whose key ca.crt holds the CA of the NATS servers' certificates")
	flag.StringVar(&cfg.Relay.NATSClientCertSecret, "nats-client-cert-secret", "", "kubernetes.io/tls Secret in the operator namespace (tls.crt, tls.key) the relay presents to NATS for mutual TLS")
	flag.StringVar(&cfg.RelayHealthURL, "relay-health-url", "", "poll this relay health URL (http://host:9090/v1/subscriptions) instead of the relay pods, e.g. for a relay outside the cluster")
	flag.DurationVar(&cfg.HealthPollInterval, "health-poll-interval", 5*time.Second, "time between polls of the relay's delivery health")
	flag.StringVar(&logLvl, "log-level", "info", "debug, info, warn or error")
	flag.Parse()

	log, err := logging.New(logLvl)
	if err != nil {
		return err
	}
	ctrl.SetLogger(log)
	cfg.Relay.Replicas = int32(replicas)
	cfg.WatchNamespaces = splitList(watchNamespaces)
	if storage != "" {
		size, err := resource.ParseQuantity(storage)
		if err != nil {
			return fmt.Errorf("--relay-storage-size: %w", err)
		}
		cfg.Relay.StorageSize = &size
	}
	if err := cfg.Validate(); err != nil {
		return err
	}

	restCfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubernetes config: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                        scheme,
		Cache:                         controller.CacheOptions(cfg),
		Metrics:                       metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:        probeAddr,
		LeaderElection:                leaderElect,
		LeaderElectionID:              leaderElectionID,
		LeaderElectionNamespace:       cfg.Namespace,
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	ctx := ctrl.SetupSignalHandler()
	if err := controller.Setup(ctx, mgr, cfg); err != nil {
		return err
	}
	log.Info("starting manager", "namespace", cfg.Namespace, "watchNamespaces", cfg.WatchNamespaces,
		"relayImage", cfg.Relay.Image, "relayReplicas", cfg.Relay.EffectiveReplicas(), "externalNATS", cfg.Relay.NATSURL != "",
		"healthSource", healthSource(cfg))
	return mgr.Start(ctx)
}

func healthSource(cfg controller.Config) string {
	if cfg.RelayHealthURL != "" {
		return cfg.RelayHealthURL
	}
	return "relay pods (EndpointSlices)"
}

// defaultNamespace is the pod's own namespace in a cluster, else the operator's
// default.
func defaultNamespace() string {
	if ns, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
		return strings.TrimSpace(string(ns))
	}
	return "involveo-webhooks"
}

// defaultRelayImage is $RELAY_IMAGE, which the shipped manager Deployment sets to its
// own image: one image holds both binaries.
func defaultRelayImage() string {
	if img := os.Getenv("RELAY_IMAGE"); img != "" {
		return img
	}
	return "ghcr.io/involveo/webhook-operator:latest"
}

func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
