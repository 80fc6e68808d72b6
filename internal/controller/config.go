// Package controller is the manager's control loop: one "relay" reconcile renders every
// WebhookSubscription into the relay's routing ConfigMap and credentials Secret, keeps
// the relay's own objects applied, and writes each subscription's status from what the
// relays report.
package controller

import (
	"errors"
	"fmt"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/relayobjects"
	"github.com/involveo/webhook-operator/internal/routing"
	"github.com/involveo/webhook-operator/internal/syncpolicy"
)

// Defaults of the settings that are not flags.
const (
	// DefaultCoalesceDelay is how long the relay reconcile waits after the first of a
	// burst of changes: applying 1,000 subscriptions at once then writes the routing
	// ConfigMap a handful of times, not 1,000, at the cost of this much latency.
	DefaultCoalesceDelay = 500 * time.Millisecond
	// DefaultEventInterval is the least time between two Kubernetes Events of one
	// reason on one subscription, so that a flapping endpoint does not flood Events.
	DefaultEventInterval = 5 * time.Minute
)

// Config is the manager's configuration; cmd/manager fills it from flags.
type Config struct {
	// Namespace is the operator namespace: the routing objects and the relay live here.
	Namespace string
	// WatchNamespaces restricts the subscriptions (and Secrets) watched; empty watches
	// every namespace.
	WatchNamespaces []string
	// Relay configures the relay's objects; its Namespace is set from Namespace.
	Relay relayobjects.Config
	// RelayHealthURL, when set, is polled instead of the relay pods behind the Service
	// (for a relay running outside the cluster).
	RelayHealthURL string
	// HealthPollInterval is the time between health polls.
	HealthPollInterval time.Duration
	// CoalesceDelay is DefaultCoalesceDelay when zero.
	CoalesceDelay time.Duration
	// EventInterval is DefaultEventInterval when zero.
	EventInterval time.Duration
}

// Validate checks the settings and fills the defaults.
func (c *Config) Validate() error {
	var errs []error
	if c.Namespace == "" {
		errs = append(errs, errors.New("--namespace must not be empty"))
	}
	if c.Relay.Image == "" {
		errs = append(errs, errors.New("--relay-image must not be empty"))
	}
	if c.Relay.Replicas < 1 {
		errs = append(errs, fmt.Errorf("--relay-replicas must be at least 1, not %d", c.Relay.Replicas))
	}
	if c.Relay.Replicas > 1 && c.Relay.NATSURL == "" {
		errs = append(errs, fmt.Errorf("--relay-replicas=%d needs --nats-url: the embedded JetStream store is local to one pod", c.Relay.Replicas))
	}
	if c.Relay.StorageSize != nil && c.Relay.NATSURL != "" {
		errs = append(errs, errors.New("--relay-storage-size applies to the embedded JetStream store only, not with --nats-url"))
	}
	for _, s := range []struct{ flag, secret string }{
		{"--nats-creds-secret", c.Relay.NATSCredsSecret},
		{"--nats-ca-secret", c.Relay.NATSCASecret},
		{"--nats-client-cert-secret", c.Relay.NATSClientCertSecret},
	} {
		if s.secret != "" && c.Relay.NATSURL == "" {
			errs = append(errs, fmt.Errorf("%s applies to an external JetStream only: it needs --nats-url", s.flag))
		}
	}
	var sync syncpolicy.Policy
	if err := sync.Set(c.Relay.SyncInterval); err != nil {
		errs = append(errs, fmt.Errorf("--relay-sync-interval: %w", err))
	} else if c.Relay.SyncInterval != "" && c.Relay.NATSURL != "" {
		errs = append(errs, errors.New("--relay-sync-interval applies to the embedded JetStream store only; an external one syncs as its servers' sync_interval says"))
	}
	if c.HealthPollInterval <= 0 {
		errs = append(errs, fmt.Errorf("--health-poll-interval must be positive, not %s", c.HealthPollInterval))
	}
	c.Relay.Namespace = c.Namespace
	if c.CoalesceDelay == 0 {
		c.CoalesceDelay = DefaultCoalesceDelay
	}
	if c.EventInterval == 0 {
		c.EventInterval = DefaultEventInterval
	}
	return errors.Join(errs...)
}

// CacheOptions restrict the manager's informers to what the reconcile reads: the
// subscriptions in the watched namespaces, only the metadata of Secrets (their contents
// are read on demand, for referenced Secrets only), and the relay's own objects in the
// operator namespace. Managed fields are dropped where nothing reads them; the relay
// objects keep theirs because drift is detected from what the manager owns.
func CacheOptions(c Config) cache.Options {
	operator := map[string]cache.Config{c.Namespace: {}}
	strip := cache.TransformStripManagedFields()
	managed := labels.SelectorFromSet(labels.Set{relayobjects.ManagedByLabel: relayobjects.ManagedBy})
	byObject := map[client.Object]cache.ByObject{
		&v1alpha1.WebhookSubscription{}: {Namespaces: watched(c.WatchNamespaces), Transform: strip},
		// Secrets are cached as metadata only (see Setup); the operator namespace is
		// included for the credentials Secret.
		&corev1.Secret{}: {Namespaces: watched(c.WatchNamespaces, c.Namespace), Transform: strip},
		&corev1.ConfigMap{}: {Namespaces: operator, Transform: strip,
			Field: fields.OneTermEqualSelector("metadata.name", routing.ConfigMapName)},
		&discoveryv1.EndpointSlice{}: {Namespaces: operator, Transform: strip,
			Label: labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: relayobjects.Name})},
	}
	for _, obj := range relayObjectTypes() {
		byObject[obj] = cache.ByObject{Namespaces: operator, Label: managed}
	}
	return cache.Options{ByObject: byObject}
}

// relayObjectTypes are the kinds of the relay's objects, cached and watched.
func relayObjectTypes() []client.Object {
	return []client.Object{
		&corev1.ServiceAccount{}, &rbacv1.Role{}, &rbacv1.RoleBinding{}, &corev1.PersistentVolumeClaim{},
		&appsv1.Deployment{}, &corev1.Service{}, &policyv1.PodDisruptionBudget{}, &networkingv1.NetworkPolicy{},
	}
}

// watched turns namespaces into cache settings; nil (every namespace) when none are
// given.
func watched(namespaces []string, extra ...string) map[string]cache.Config {
	if len(namespaces) == 0 {
		return nil
	}
	out := map[string]cache.Config{}
	for _, ns := range slices.Concat(namespaces, extra) {
		out[ns] = cache.Config{}
	}
	return out
}
