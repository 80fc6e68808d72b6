package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/health"
)

// replayRequest is the redelivery sub asks for through its annotations, or nil
// when there is none or it was served already (status.replay.requested holds
// the value): re-applying the same manifest replays nothing.
func replayRequest(sub *v1alpha1.WebhookSubscription) (value string, since *metav1.Time, err error) {
	value = sub.Annotations[v1alpha1.AnnotationRedeliver]
	if r := sub.Status.Replay; value == "" || (r != nil && r.Requested == value && r.CompletedTime != nil) {
		return "", nil, nil
	}
	if raw := sub.Annotations[v1alpha1.AnnotationRedeliverSince]; raw != "" {
		t, err := time.Parse(time.RFC3339, raw)
		if err != nil {
			return "", nil, fmt.Errorf("annotation %s: %q is not an RFC 3339 time", v1alpha1.AnnotationRedeliverSince, raw)
		}
		since = &metav1.Time{Time: t}
	}
	return value, since, nil
}

// replay asks every relay to re-enqueue the subscription's dead letters and to
// resume the endpoint if paused. Dead letters live in the shared stream, so
// one relay replays them and the others find none; every relay resumes its own
// breaker.
func (r *RelayReconciler) replay(ctx context.Context, sub *v1alpha1.WebhookSubscription, value string, since, started *metav1.Time) (*v1alpha1.ReplayStatus, error) {
	bases, err := r.health.RelayURLs(ctx)
	if err != nil {
		return nil, fmt.Errorf("find relays: %w", err)
	}
	if len(bases) == 0 {
		// During a rollout there may be no relay to ask; recording the
		// request as done would lose it.
		return nil, errors.New("no relay to ask for the redelivery yet")
	}
	// started is stored in whole seconds; the bound is the end of that second
	// so a dead letter from just before the request is included.
	q := url.Values{"until": {started.Add(time.Second).UTC().Format(time.RFC3339Nano)}}
	if since != nil {
		q.Set("since", since.UTC().Format(time.RFC3339))
	}
	path := health.SubscriptionPath(health.RedeliverPath, url.PathEscape(sub.Namespace), url.PathEscape(sub.Name))
	total := int64(0)
	for _, base := range bases {
		n, err := postRedeliver(ctx, base+path+"?"+q.Encode())
		if err != nil {
			return nil, err
		}
		total += n
	}
	return &v1alpha1.ReplayStatus{Requested: value, Since: since, Replayed: total, StartedTime: started,
		CompletedTime: &metav1.Time{Time: time.Now().UTC().Truncate(time.Second)}}, nil
}

func postRedeliver(ctx context.Context, u string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("ask the relay to redeliver: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("ask the relay to redeliver: HTTP %d", resp.StatusCode)
	}
	var out health.RedeliverResult
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, fmt.Errorf("read the relay's redeliver answer: %w", err)
	}
	return int64(out.Replayed), nil
}

// serveReplay performs a pending redelivery of sub into want.Replay. It waits
// until the relay has loaded the subscription (it answers 404 before) and
// reports whether it must be looked at again.
func (r *RelayReconciler) serveReplay(ctx context.Context, sub *v1alpha1.WebhookSubscription, want *v1alpha1.WebhookSubscriptionStatus) (again bool) {
	value, since, err := replayRequest(sub)
	log := ctrl.LoggerFrom(ctx)
	if err != nil {
		log.Info("ignoring redeliver request", "subscription", sub.Namespace+"/"+sub.Name, "reason", err.Error())
		return false
	}
	if value == "" {
		return false
	}
	if !meta.IsStatusConditionTrue(want.Conditions, v1alpha1.ConditionReady) {
		return true
	}
	// A retried request keeps its first start time (whole seconds, as status
	// stores it), so relays that already replayed find nothing new to replay.
	started := &metav1.Time{Time: time.Now().UTC().Truncate(time.Second)}
	if r := sub.Status.Replay; r != nil && r.Requested == value && r.StartedTime != nil {
		started = r.StartedTime
	}
	done, err := r.replay(ctx, sub, value, since, started)
	if err != nil {
		log.Error(err, "redeliver dead letters", "subscription", sub.Namespace+"/"+sub.Name)
		want.Replay = &v1alpha1.ReplayStatus{Requested: value, Since: since, StartedTime: started}
		return true
	}
	want.Replay = done
	r.recorder.Eventf(sub, nil, corev1.EventTypeNormal, v1alpha1.ReasonRedelivered, "Redeliver",
		"%d dead letters re-enqueued with a fresh retry budget (request %q)", done.Replayed, value)
	return false
}
