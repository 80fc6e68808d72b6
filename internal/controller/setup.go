package controller

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/health"
	"github.com/involveo/webhook-operator/internal/healthpoll"
	"github.com/involveo/webhook-operator/internal/relayobjects"
	"github.com/involveo/webhook-operator/internal/render"
	"github.com/involveo/webhook-operator/internal/routing"
)

// secretRefIndex indexes subscriptions by the names of the Secrets they reference.
const secretRefIndex = "spec.secretRefs"

// Setup adds the relay reconcile and the health poller to mgr, which must have been
// created with CacheOptions(cfg). cfg must have passed Validate.
func Setup(ctx context.Context, mgr manager.Manager, cfg Config) error {
	err := mgr.GetFieldIndexer().IndexField(ctx, &v1alpha1.WebhookSubscription{}, secretRefIndex, func(obj client.Object) []string {
		return render.SecretNames(obj.(*v1alpha1.WebhookSubscription))
	})
	if err != nil {
		return fmt.Errorf("index subscriptions by Secret: %w", err)
	}

	trigger := &trigger{request: reconcile.Request{NamespacedName: types.NamespacedName{Namespace: cfg.Namespace, Name: relayobjects.Name}}}
	poller := newPoller(mgr, cfg, trigger.fire)
	if err := mgr.Add(poller); err != nil {
		return fmt.Errorf("add health poller: %w", err)
	}
	r := &RelayReconciler{
		client:        mgr.GetClient(),
		config:        cfg,
		health:        poller,
		recorder:      mgr.GetEventRecorder("webhook-manager"),
		limiter:       &eventLimiter{interval: cfg.EventInterval},
		tenantSecrets: newSecretReader(mgr.GetClient(), mgr.GetAPIReader()),
		ownSecret:     newSecretReader(mgr.GetClient(), mgr.GetAPIReader()),
	}

	enqueue := trigger.handler(cfg.CoalesceDelay, nil)
	// Only spec changes matter to the table; the manager writes the status itself.
	specChanged := builder.WithPredicates(predicate.GenerationChangedPredicate{})
	// A redeliver annotation changes no generation but asks for work.
	specOrReplay := builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))
	b := ctrl.NewControllerManagedBy(mgr).
		Named("relay").
		WithOptions(controller.Options{MaxConcurrentReconciles: 1}).
		Watches(&v1alpha1.WebhookSubscription{}, enqueue, specOrReplay).
		WatchesMetadata(&corev1.Secret{}, trigger.handler(cfg.CoalesceDelay, r.secretMatters)).
		Watches(&corev1.ConfigMap{}, enqueue).
		WatchesRawSource(trigger.source())
	for _, obj := range relayObjectTypes() {
		switch obj.(type) {
		case *appsv1.Deployment, *policyv1.PodDisruptionBudget:
			// Their status changes all the time; only spec changes can be drift.
			b = b.Watches(obj, enqueue, specChanged)
		default:
			b = b.Watches(obj, enqueue)
		}
	}
	return b.Complete(r)
}

// secretMatters reports whether a Secret event concerns the table: the credentials
// Secret itself, or a Secret some subscription references.
func (r *RelayReconciler) secretMatters(ctx context.Context, obj client.Object) bool {
	if obj.GetNamespace() == r.config.Namespace && obj.GetName() == routing.CredentialsSecretName {
		return true
	}
	// The operator namespace's other Secrets are watched along with the credentials
	// Secret, but no subscription there is served unless it is watched.
	if len(r.config.WatchNamespaces) > 0 && !slices.Contains(r.config.WatchNamespaces, obj.GetNamespace()) {
		return false
	}
	var subs v1alpha1.WebhookSubscriptionList
	err := r.client.List(ctx, &subs, client.InNamespace(obj.GetNamespace()), client.MatchingFields{secretRefIndex: obj.GetName()})
	if err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "look up subscriptions referencing a Secret; reconciling to be safe", "secret", client.ObjectKeyFromObject(obj).String())
		return true
	}
	return len(subs.Items) > 0
}

// trigger maps every event to the one relay request, and lets things outside the
// informers (the health poller) ask for a pass.
type trigger struct {
	request reconcile.Request
	mu      sync.Mutex
	queue   workqueue.TypedRateLimitingInterface[reconcile.Request]
}

// source hands the trigger the controller's queue and asks for a first pass, so the
// routing objects are rendered even when there is no subscription.
func (t *trigger) source() source.Source {
	return source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		t.mu.Lock()
		t.queue = q
		t.mu.Unlock()
		q.Add(t.request)
		return nil
	})
}

// fire asks for a pass now; before the controller starts it does nothing, and the
// first pass comes anyway.
func (t *trigger) fire() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.queue != nil {
		t.queue.Add(t.request)
	}
}

// handler enqueues the relay request delay after an event that passes filter (nil:
// every event). Requests added while one waits merge into it, so a burst of events
// becomes one pass.
func (t *trigger) handler(delay time.Duration, filter func(context.Context, client.Object) bool) handler.EventHandler {
	add := func(ctx context.Context, obj client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		if filter == nil || filter(ctx, obj) {
			q.AddAfter(t.request, delay)
		}
	}
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(ctx, e.Object, q)
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(ctx, e.ObjectNew, q)
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(ctx, e.Object, q)
		},
		GenericFunc: func(ctx context.Context, e event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(ctx, e.Object, q)
		},
	}
}

// newPoller polls --relay-health-url, or else every relay pod behind the Service.
func newPoller(mgr manager.Manager, cfg Config, onChange func()) *healthpoll.Poller {
	p := &healthpoll.Poller{
		Interval: cfg.HealthPollInterval,
		Seed:     seedFromStatus(mgr.GetClient()),
		OnChange: onChange,
		Client:   &http.Client{},
		Log:      mgr.GetLogger().WithName("health"),
	}
	if cfg.RelayHealthURL != "" {
		p.Source = cfg.RelayHealthURL
		p.Targets = func(context.Context) ([]string, error) { return []string{cfg.RelayHealthURL}, nil }
		return p
	}
	p.Source = fmt.Sprintf("the pods of Service %s/%s", cfg.Namespace, relayobjects.Name)
	p.Targets = relayPods(mgr.GetClient(), cfg.Namespace)
	return p
}

// relayPods finds the admin endpoints of the relay pods in the Service's
// EndpointSlices. Pods not ready yet are polled too: a relay still waiting for its
// table is exactly what RoutePending should show.
func relayPods(c client.Reader, namespace string) func(context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		var slicesList discoveryv1.EndpointSliceList
		if err := c.List(ctx, &slicesList, client.InNamespace(namespace),
			client.MatchingLabels{discoveryv1.LabelServiceName: relayobjects.Name}); err != nil {
			return nil, fmt.Errorf("list EndpointSlices of Service %s/%s: %w", namespace, relayobjects.Name, err)
		}
		var urls []string
		for _, s := range slicesList.Items {
			port := adminPort(s.Ports)
			for _, ep := range s.Endpoints {
				if ep.Conditions.Terminating != nil && *ep.Conditions.Terminating {
					continue
				}
				for _, addr := range ep.Addresses {
					urls = append(urls, "http://"+net.JoinHostPort(addr, strconv.Itoa(int(port)))+health.Path)
				}
			}
		}
		slices.Sort(urls)
		return slices.Compact(urls), nil
	}
}

func adminPort(ports []discoveryv1.EndpointPort) int32 {
	for _, p := range ports {
		if p.Name != nil && *p.Name == relayobjects.AdminPortName && p.Port != nil {
			return *p.Port
		}
	}
	return relayobjects.AdminPort
}

// seedFromStatus reads the delivery figures the subscriptions' status already shows,
// so totals continue from there after the manager restarts.
func seedFromStatus(c client.Reader) func(context.Context) (map[string]healthpoll.Seed, error) {
	return func(ctx context.Context) (map[string]healthpoll.Seed, error) {
		var subs v1alpha1.WebhookSubscriptionList
		if err := c.List(ctx, &subs, client.UnsafeDisableDeepCopy); err != nil {
			return nil, fmt.Errorf("list subscriptions: %w", err)
		}
		seeds := make(map[string]healthpoll.Seed, len(subs.Items))
		for _, s := range subs.Items {
			seeds[s.Namespace+"/"+s.Name] = healthpoll.Seed{UID: s.UID, Delivery: s.Status.Delivery}
		}
		return seeds, nil
	}
}
