package controller

import (
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/health"
	"github.com/involveo/webhook-operator/internal/healthpoll"
	"github.com/involveo/webhook-operator/internal/render"
)

// readiness is the Ready condition of a subscription.
type readiness struct {
	status  metav1.ConditionStatus
	reason  string
	message string
}

// waiting: the manager gets there without a user's change to the spec (kstatus
// Reconciling).
func (r readiness) waiting() bool { return waitingReasons[r.reason] }

// stalled: only a change to the spec helps (kstatus Stalled).
func (r readiness) stalled() bool {
	return r.reason == v1alpha1.ReasonInvalidSpec || r.reason == v1alpha1.ReasonInvalidFilter
}

// pending: the relay should load the route soon, so look again after a poll.
func (r readiness) pending() bool {
	return r.reason == v1alpha1.ReasonRoutePending || r.reason == v1alpha1.ReasonRelayUnavailable
}

// waitingReasons are the Ready reasons the manager recovers from on its own: once the
// Secret appears or the relay loads the route, the subscription becomes Ready.
var waitingReasons = map[string]bool{
	v1alpha1.ReasonSecretNotFound:     true,
	v1alpha1.ReasonSecretKeyNotFound:  true,
	v1alpha1.ReasonInvalidSecretValue: true,
	v1alpha1.ReasonRelayUnavailable:   true,
	v1alpha1.ReasonRoutePending:       true,
}

// ready decides the Ready condition. ok is false before the first health poll: the
// relay's state is unknown then, and guessing would flip every subscription at
// manager start.
func ready(sub *v1alpha1.WebhookSubscription, verdict render.Verdict, view *healthpoll.View) (readiness, bool) {
	if !verdict.Included {
		return readiness{status: metav1.ConditionFalse, reason: verdict.Reason, message: verdict.Message}, true
	}
	if !view.Polled {
		return readiness{}, false
	}
	if view.Replicas == 0 {
		return readiness{status: metav1.ConditionFalse, reason: v1alpha1.ReasonRelayUnavailable,
			message: "no relay answered the health poll: " + view.Unavailable}, true
	}
	// The revision is left out of messages on purpose: it changes with every other
	// subscription, and naming it would rewrite every status on every change.
	have, of := view.Loaded(sub.Namespace+"/"+sub.Name, sub.Generation)
	if have == of {
		return readiness{status: metav1.ConditionTrue, reason: v1alpha1.ReasonRouteLoaded,
			message: fmt.Sprintf("the relay has loaded generation %d%s", sub.Generation, ofReplicas(have, of))}, true
	}
	return readiness{status: metav1.ConditionFalse, reason: v1alpha1.ReasonRoutePending,
		message: fmt.Sprintf("generation %d is in the routing table; waiting for the relay to load it%s", sub.Generation, ofReplicas(have, of))}, true
}

func ofReplicas(have, of int) string {
	if of == 1 {
		return ""
	}
	return fmt.Sprintf(" (%d of %d relay replicas have)", have, of)
}

// deliveryHealthy decides the DeliveryHealthy condition from the delivery figures.
func deliveryHealthy(d healthpoll.Delivery, pause *health.Pause, generation int64) metav1.Condition {
	c := metav1.Condition{Type: v1alpha1.ConditionDeliveryHealthy, ObservedGeneration: generation}
	s := d.Status
	switch {
	case pause != nil:
		c.Status, c.Reason = metav1.ConditionFalse, v1alpha1.ReasonEndpointPaused
		c.Message = fmt.Sprintf("the relay paused deliveries at %s because %s; they are held, not dropped. "+
			"One is retried at %s; set the %s annotation to resume now",
			pause.Since.UTC().Format(time.RFC3339), pause.Reason, pause.NextProbe.UTC().Format(time.RFC3339), v1alpha1.AnnotationRedeliver)
	case s.LastAttemptTime == nil:
		c.Status, c.Reason, c.Message = metav1.ConditionUnknown, v1alpha1.ReasonNoDeliveries, "no delivery has been attempted yet"
	case d.LastSucceeded:
		c.Status, c.Reason = metav1.ConditionTrue, v1alpha1.ReasonDeliverySucceeded
		c.Message = fmt.Sprintf("the last delivery, at %s, got 200 OK", stamp(s.LastAttemptTime))
	default:
		c.Status, c.Reason = metav1.ConditionFalse, v1alpha1.ReasonDeliveryFailing
		c.Message = failureMessage(s)
	}
	return c
}

// failureMessage names the status code or error, the event type and the time of the
// latest failure. The relay's failure reasons never hold header values or bodies.
func failureMessage(s v1alpha1.DeliveryStatus) string {
	f := s.LastFailure
	if f == nil {
		f = &v1alpha1.DeliveryFailure{Reason: "unknown error"}
	}
	msg := fmt.Sprintf("delivering %s failed at %s: %s", orUnknown(f.Event), stamp(s.LastFailureTime), f.Reason)
	if s.ConsecutiveFailures > 1 {
		msg += fmt.Sprintf(" (%d failures in a row)", s.ConsecutiveFailures)
	}
	return msg
}

func orUnknown(event string) string {
	if event == "" {
		return "an event"
	}
	return "a " + event + " event"
}

func stamp(t *metav1.Time) string {
	if t == nil {
		return "an unknown time"
	}
	return t.UTC().Format(time.RFC3339)
}

// desiredStatus is the status sub should have. ok is false when it cannot be decided
// yet (before the first health poll) and the status is left as it is.
func desiredStatus(sub *v1alpha1.WebhookSubscription, verdict render.Verdict, view *healthpoll.View, d healthpoll.Delivery) (status v1alpha1.WebhookSubscriptionStatus, pending, ok bool) {
	r, ok := ready(sub, verdict, view)
	if !ok {
		return sub.Status, false, false
	}
	st := *sub.Status.DeepCopy()
	st.ObservedGeneration = sub.Generation
	setCondition(&st, v1alpha1.ConditionReady, r.status, r.reason, r.message, sub.Generation)
	kstatus := []struct {
		condition string
		active    bool
	}{{v1alpha1.ConditionReconciling, r.waiting()}, {v1alpha1.ConditionStalled, r.stalled()}}
	for _, k := range kstatus {
		if k.active {
			setCondition(&st, k.condition, metav1.ConditionTrue, r.reason, r.message, sub.Generation)
		} else {
			meta.RemoveStatusCondition(&st.Conditions, k.condition)
		}
	}
	meta.SetStatusCondition(&st.Conditions, deliveryHealthy(d, view.Paused(sub.Namespace+"/"+sub.Name), sub.Generation))
	st.Delivery = nil
	if d.Status != (v1alpha1.DeliveryStatus{}) {
		st.Delivery = d.Status.DeepCopy()
	}
	return st, r.pending(), true
}

func setCondition(st *v1alpha1.WebhookSubscriptionStatus, kind string, status metav1.ConditionStatus, reason, message string, generation int64) {
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: kind, Status: status, Reason: reason, Message: message, ObservedGeneration: generation,
	})
}

// eventNotes are the Kubernetes Events a status change calls for: when deliveries start
// failing, when they recover, and when deliveries were dead-lettered.
func eventNotes(before, after *v1alpha1.WebhookSubscriptionStatus) []eventNote {
	var notes []eventNote
	was := meta.FindStatusCondition(before.Conditions, v1alpha1.ConditionDeliveryHealthy)
	now := meta.FindStatusCondition(after.Conditions, v1alpha1.ConditionDeliveryHealthy)
	wasFailing := was != nil && was.Status == metav1.ConditionFalse
	switch {
	case now == nil:
	case now.Reason == v1alpha1.ReasonEndpointPaused && (was == nil || was.Reason != v1alpha1.ReasonEndpointPaused):
		notes = append(notes, eventNote{corev1.EventTypeWarning, v1alpha1.ReasonEndpointPaused, now.Message})
	case now.Status == metav1.ConditionFalse && !wasFailing:
		notes = append(notes, eventNote{corev1.EventTypeWarning, v1alpha1.ReasonDeliveryFailing, now.Message})
	case now.Status == metav1.ConditionTrue && wasFailing:
		notes = append(notes, eventNote{corev1.EventTypeNormal, v1alpha1.ReasonDeliveryRecovered, "deliveries succeed again: " + now.Message})
	}
	var dlBefore, dlAfter int64
	if before.Delivery != nil {
		dlBefore = before.Delivery.DeadLettered
	}
	if after.Delivery != nil {
		dlAfter = after.Delivery.DeadLettered
	}
	if dlAfter > dlBefore {
		note := fmt.Sprintf("%d deliveries gave up after their last retry (%d in total)", dlAfter-dlBefore, dlAfter)
		if after.Delivery.LastFailure != nil {
			note += "; last failure: " + failureMessage(*after.Delivery)
		}
		notes = append(notes, eventNote{corev1.EventTypeWarning, v1alpha1.ReasonDeadLettered, note})
	}
	return notes
}

type eventNote struct {
	kind, reason, note string
}

// eventLimiter lets one Event of a reason per subscription through per interval.
type eventLimiter struct {
	interval time.Duration
	mu       sync.Mutex
	last     map[string]time.Time
	pruned   time.Time
}

func (l *eventLimiter) allow(uid types.UID, reason string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last = map[string]time.Time{}
	}
	if now.Sub(l.pruned) > l.interval {
		for k, t := range l.last {
			if now.Sub(t) > l.interval {
				delete(l.last, k)
			}
		}
		l.pruned = now
	}
	key := string(uid) + "/" + reason
	if t, seen := l.last[key]; seen && now.Sub(t) < l.interval {
		return false
	}
	l.last[key] = now
	return true
}

// emitEvents records the Events for a status change, rate-limited.
func emitEvents(rec recorder.EventRecorder, limiter *eventLimiter, sub *v1alpha1.WebhookSubscription, after *v1alpha1.WebhookSubscriptionStatus) {
	now := time.Now()
	for _, n := range eventNotes(&sub.Status, after) {
		if limiter.allow(sub.UID, n.reason, now) {
			rec.Eventf(sub, nil, n.kind, n.reason, "Deliver", "%s", n.note)
		}
	}
}
