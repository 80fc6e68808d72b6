package controller

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/healthpoll"
	"github.com/involveo/webhook-operator/internal/render"
)

// statusPatchConcurrency bounds the status patches in flight: at start-up with 10,000
// subscriptions one at a time would take minutes.
const statusPatchConcurrency = 32

// Cluster-wide: the subscriptions, their status, the Secrets they reference (metadata
// watched everywhere, content read for referenced ones only) and Events on them.
// +kubebuilder:rbac:groups=webhooks.involveo.io,resources=webhooksubscriptions,verbs=get;list;watch
// +kubebuilder:rbac:groups=webhooks.involveo.io,resources=webhooksubscriptions/status,verbs=patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Operator namespace only: the routing objects, the relay's objects, its pods'
// EndpointSlices, and leader election. Server-side apply needs create and patch.
// +kubebuilder:rbac:groups="",namespace=involveo-webhooks,resources=configmaps,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",namespace=involveo-webhooks,resources=secrets,verbs=create;patch
// +kubebuilder:rbac:groups="",namespace=involveo-webhooks,resources=serviceaccounts;services;persistentvolumeclaims,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=apps,namespace=involveo-webhooks,resources=deployments,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=policy,namespace=involveo-webhooks,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=networking.k8s.io,namespace=involveo-webhooks,resources=networkpolicies,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,namespace=involveo-webhooks,resources=roles;rolebindings,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=discovery.k8s.io,namespace=involveo-webhooks,resources=endpointslices,verbs=get;list;watch
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=involveo-webhooks,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",namespace=involveo-webhooks,resources=events,verbs=create;patch

// RelayReconciler is the one reconcile behind every event: it renders all subscriptions
// into the routing objects, applies the relay's objects and writes every status.
type RelayReconciler struct {
	client   client.Client
	config   Config
	health   *healthpoll.Poller
	recorder recorder.EventRecorder
	limiter  *eventLimiter

	tenantSecrets *secretReader
	ownSecret     *secretReader
	memo          renderMemo
}

// Reconcile runs one pass. The request is always the same, so events arriving while a
// pass runs coalesce into the next one.
func (r *RelayReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	start := time.Now()
	// The reconcile only reads the cached objects (statuses are copied before they
	// change), so copying 10,000 of them on every pass would be waste.
	var subs v1alpha1.WebhookSubscriptionList
	if err := r.client.List(ctx, &subs, client.UnsafeDisableDeepCopy); err != nil {
		return reconcile.Result{}, fmt.Errorf("list subscriptions: %w", err)
	}
	res, err := r.render(ctx, subs.Items)
	if err != nil {
		return reconcile.Result{}, err
	}
	view := r.health.View()
	tableChanged, err := r.applyRouting(ctx, res, view)
	if err != nil {
		return reconcile.Result{}, err
	}
	// The relay's objects do not hold up the status: a failing apply there (a PVC
	// that cannot shrink, say) must not hide the subscriptions' state.
	objectsErr := r.applyRelayObjects(ctx)
	pending, written, statusErr := r.writeStatuses(ctx, subs.Items, res, view, tableChanged)
	ctrl.LoggerFrom(ctx).V(1).Info("relay pass done", "took", time.Since(start).String(), "subscriptions", len(subs.Items),
		"routed", len(res.Table.Subscriptions), "tableChanged", tableChanged, "statusesWritten", written, "relays", view.Replicas)
	if err := errors.Join(objectsErr, statusErr); err != nil {
		return reconcile.Result{}, err
	}
	if pending {
		return reconcile.Result{RequeueAfter: r.config.HealthPollInterval}, nil
	}
	return reconcile.Result{}, nil
}

// renderMemo keeps the last render and the digest of its inputs. Health reports and
// status updates trigger passes that change nothing the table depends on, and
// rendering 10,000 subscriptions takes about a second.
type renderMemo struct {
	digest [sha256.Size]byte
	result *render.Result
}

// render reads the referenced Secrets and renders the table, or reuses the last render
// when neither a subscription's spec nor a Secret changed.
func (r *RelayReconciler) render(ctx context.Context, subs []v1alpha1.WebhookSubscription) (*render.Result, error) {
	secrets, err := r.tenantSecrets.read(ctx, referencedSecrets(subs))
	if err != nil {
		return nil, err
	}
	digest := inputDigest(subs, r.tenantSecrets.data)
	if r.memo.result != nil && digest == r.memo.digest {
		return r.memo.result, nil
	}
	// The old result can go before the new one is built: rendering 10,000
	// subscriptions is the manager's largest allocation.
	r.memo = renderMemo{}
	res, err := render.Routes(subs, secrets)
	if err != nil {
		return nil, err
	}
	r.memo = renderMemo{digest: digest, result: res}
	return res, nil
}

// referencedSecrets lists the Secrets of every subscription that is not suspended.
func referencedSecrets(subs []v1alpha1.WebhookSubscription) []types.NamespacedName {
	var names []types.NamespacedName
	for i := range subs {
		if subs[i].Spec.Suspend {
			continue
		}
		for _, name := range render.SecretNames(&subs[i]) {
			names = append(names, types.NamespacedName{Namespace: subs[i].Namespace, Name: name})
		}
	}
	slices.SortFunc(names, func(a, b types.NamespacedName) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return slices.Compact(names)
}

// inputDigest covers what the render depends on: each subscription's name and
// generation (which changes with every spec change) and each Secret's resourceVersion.
func inputDigest(subs []v1alpha1.WebhookSubscription, secrets map[types.NamespacedName]secretData) [sha256.Size]byte {
	lines := make([]string, 0, len(subs)+len(secrets))
	for i := range subs {
		lines = append(lines, "s "+subs[i].Namespace+"/"+subs[i].Name+" "+strconv.FormatInt(subs[i].Generation, 10))
	}
	for name, d := range secrets {
		lines = append(lines, "k "+name.String()+" "+d.resourceVersion)
	}
	slices.Sort(lines)
	h := sha256.New()
	for _, l := range lines {
		h.Write([]byte(l + "\n"))
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// writeStatuses patches every subscription whose status changed, and reports whether
// any waits for the relay and how many it patched. Right after the table changed,
// RoutePending is not written: the relay loads a table within a poll or two, and the
// pass its report triggers then writes Ready directly, which halves the status writes
// of a burst of new subscriptions. Should the relay not load it, the requeued pass
// writes RoutePending.
func (r *RelayReconciler) writeStatuses(ctx context.Context, subs []v1alpha1.WebhookSubscription, res *render.Result,
	view *healthpoll.View, tableChanged bool) (bool, int, error) {
	ids := make(map[string]bool, len(subs))
	for i := range subs {
		ids[subs[i].Namespace+"/"+subs[i].Name] = true
	}
	r.health.Retain(ids)

	var pending atomic.Bool
	var written atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(statusPatchConcurrency)
	for i := range subs {
		sub := &subs[i]
		key := types.NamespacedName{Namespace: sub.Namespace, Name: sub.Name}
		delivery, _ := r.health.Delivery(key.String(), sub.UID)
		want, waiting, ok := desiredStatus(sub, res.Verdicts[key], view, delivery)
		if waiting {
			pending.Store(true)
		}
		if !ok {
			continue
		}
		g.Go(func() error {
			if r.serveReplay(ctx, sub, &want) {
				pending.Store(true)
			}
			if equality.Semantic.DeepEqual(sub.Status, want) || deferred(sub, &want, tableChanged) {
				return nil
			}
			written.Add(1)
			return r.patchStatus(ctx, sub, want)
		})
	}
	err := g.Wait()
	return pending.Load(), int(written.Load()), err
}

// deferred reports whether writing want can wait for the next pass: it only says the
// route is pending, and the table just changed.
func deferred(sub *v1alpha1.WebhookSubscription, want *v1alpha1.WebhookSubscriptionStatus, tableChanged bool) bool {
	return tableChanged && isRoutePending(want) && equality.Semantic.DeepEqual(sub.Status.Replay, want.Replay)
}

func isRoutePending(st *v1alpha1.WebhookSubscriptionStatus) bool {
	c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady)
	return c != nil && c.Reason == v1alpha1.ReasonRoutePending
}

func (r *RelayReconciler) patchStatus(ctx context.Context, sub *v1alpha1.WebhookSubscription, want v1alpha1.WebhookSubscriptionStatus) error {
	patched := sub.DeepCopy()
	patched.Status = want
	if err := r.client.Status().Patch(ctx, patched, client.MergeFrom(sub)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("patch status of %s/%s: %w", sub.Namespace, sub.Name, err)
	}
	if c := meta.FindStatusCondition(want.Conditions, v1alpha1.ConditionReady); c != nil {
		ctrl.LoggerFrom(ctx).V(2).Info("status updated", "subscription", sub.Namespace+"/"+sub.Name,
			"generation", sub.Generation, "ready", c.Status, "reason", c.Reason)
	}
	emitEvents(r.recorder, r.limiter, sub, &want)
	return nil
}
