package kubectlplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	v1alpha1 "github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/health"
)

// requestTimeFormat is RFC 3339 with milliseconds: two requests in the same
// second still get different values, and so both replay.
const requestTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// Waiting for the manager with --wait.
const (
	// replayPollInterval is well under the manager's reaction time to an
	// annotation (one reconcile) and light on the API server.
	replayPollInterval = time.Second
	// defaultReplayTimeout covers a replay of tens of thousands of dead
	// letters; the replay itself goes on if the wait gives up.
	defaultReplayTimeout = 5 * time.Minute
)

type redeliverFlags struct {
	since   string
	wait    bool
	timeout time.Duration
	direct  bool
}

func newRedeliverCommand(o *options) *cobra.Command {
	var f redeliverFlags
	cmd := &cobra.Command{
		Use:   "redeliver SUB",
		Short: "Replay a subscription's dead letters (and resume a paused endpoint)",
		Long: `Ask the manager to re-enqueue a subscription's dead letters with a fresh retry
budget, by annotating the subscription with webhooks.involveo.io/redeliver=<now>
(and webhooks.involveo.io/redeliver-since with --since). The manager performs
the replay once per annotation value and reports it in status.replay. A paused
endpoint resumes too.

--direct asks the relay instead, for when the manager is not running; such a
replay is not recorded in status.replay.`,
		Example: `  # the endpoint is back after a weekend outage: replay the last three days
  kubectl involveo redeliver crm-sync -n team-a --since 72h --wait

  # every dead letter since a point in time
  kubectl involveo redeliver crm-sync -n team-a --since 2026-05-01T18:00:00Z`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.direct && f.wait {
				return errors.New("--wait watches status.replay, which --direct does not update")
			}
			now := o.now()
			var since time.Time
			if f.since != "" {
				var err error
				if since, err = parseSince(f.since, now); err != nil {
					return err
				}
			}
			ns, name, err := o.subscriptionArg(args)
			if err != nil {
				return err
			}
			if f.direct {
				return o.redeliverDirect(cmd.Context(), ns, name, since)
			}
			return o.requestReplay(cmd.Context(), ns, name, now, since, f)
		},
	}
	cmd.Flags().StringVar(&f.since, "since", "",
		"Replay only dead letters stored at or after this time: RFC 3339 (2026-05-01T18:00:00Z) or a duration before now (48h)")
	cmd.Flags().BoolVar(&f.wait, "wait", false, "Wait until the manager reports the replay in status.replay")
	cmd.Flags().DurationVar(&f.timeout, "timeout", defaultReplayTimeout, "How long --wait waits")
	cmd.Flags().BoolVar(&f.direct, "direct", false,
		"Ask the relay directly instead of annotating the subscription (not recorded in status.replay)")
	return cmd
}

// parseSince reads --since: an RFC 3339 time, or a duration counted back
// from now, which is what someone reading "down since Friday" types.
func parseSince(value string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, value); err == nil {
		if t.After(now) {
			return time.Time{}, fmt.Errorf("--since %s is in the future", value)
		}
		return t.UTC(), nil
	}
	d, err := time.ParseDuration(value)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("--since %q: want an RFC 3339 time (2026-05-01T18:00:00Z) or a positive duration (48h)", value)
	}
	return now.Add(-d).UTC(), nil
}

// redeliverPatch sets the request annotations. Without since it removes a
// since left by an earlier request, which would otherwise narrow this one.
func redeliverPatch(requested string, since time.Time) ([]byte, error) {
	var sinceValue any
	if !since.IsZero() {
		sinceValue = since.UTC().Format(time.RFC3339Nano)
	}
	return json.Marshal(map[string]any{
		"metadata": map[string]any{
			"annotations": map[string]any{
				v1alpha1.AnnotationRedeliver:      requested,
				v1alpha1.AnnotationRedeliverSince: sinceValue,
			},
		},
	})
}

func (o *options) requestReplay(ctx context.Context, ns, name string, now, since time.Time, f redeliverFlags) error {
	client, err := o.subscriptions(ns)
	if err != nil {
		return err
	}
	requested := now.UTC().Format(requestTimeFormat)
	patch, err := redeliverPatch(requested, since)
	if err != nil {
		return err
	}
	if _, err := client.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotate webhooksubscription %s/%s: %w", ns, name, err)
	}
	out := o.streams.Out
	fmt.Fprintf(out, "webhooksubscription %s/%s annotated %s=%s\n", ns, name, v1alpha1.AnnotationRedeliver, requested)
	if !since.IsZero() {
		fmt.Fprintf(out, "  dead letters since %s\n", since.Format(time.RFC3339))
	}
	if !f.wait {
		fmt.Fprintf(out, "replay requested; watch: kubectl get whs %s -n %s -o jsonpath='{.status.replay}'\n", name, ns)
		return nil
	}
	fmt.Fprintln(out, "replay requested; waiting for the manager")
	r, err := waitForReplay(ctx, client, name, requested, f.timeout)
	if err != nil {
		return fmt.Errorf("wait for the replay of %s/%s: %w", ns, name, err)
	}
	fmt.Fprintf(out, "replayed %d dead letters of %s/%s", r.replayed, ns, name)
	if r.completedTime != "" {
		fmt.Fprintf(out, " (completed %s)", r.completedTime)
	}
	fmt.Fprintln(out)
	return nil
}

// replayStatus is status.replay as far as this binary knows it. It is read
// from the unstructured object so that the plugin works with a manager that
// has more (or, before it reports replays, none) of these fields.
type replayStatus struct {
	requested     string
	replayed      int64
	completedTime string
}

func replayOf(u *unstructured.Unstructured) (replayStatus, bool) {
	m, found, err := unstructured.NestedMap(u.Object, "status", "replay")
	if err != nil || !found {
		return replayStatus{}, false
	}
	r := replayStatus{}
	r.requested, _ = m["requested"].(string)
	r.completedTime, _ = m["completedTime"].(string)
	switch n := m["replayed"].(type) {
	case int64:
		r.replayed = n
	case float64:
		r.replayed = int64(n)
	}
	return r, true
}

// waitForReplay polls until status.replay.requested is the value this
// command set, which the manager writes when it has handled it. The timeout
// bounds the wait between polls, not a poll in flight (--request-timeout
// does that), so a slow last Get still ends in the timeout's message.
func waitForReplay(ctx context.Context, client dynamic.ResourceInterface, name, requested string, timeout time.Duration) (replayStatus, error) {
	deadline := time.Now().Add(timeout)
	ticker := time.NewTicker(replayPollInterval)
	defer ticker.Stop()
	for {
		u, err := client.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return replayStatus{}, err
		}
		r, ok := replayOf(u)
		if ok && r.requested == requested && r.completedTime != "" {
			return r, nil
		}
		if !time.Now().Before(deadline) {
			// The manager replays only once the relay has loaded the
			// subscription, so Ready is the likeliest explanation.
			return r, fmt.Errorf("status.replay.requested is still %q after %s (Ready: %s); the manager replays once the subscription is Ready",
				r.requested, timeout, readyOf(u))
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-ticker.C:
		}
	}
}

// readyOf is the Ready condition of an unstructured subscription as `get`
// shows it.
func readyOf(u *unstructured.Unstructured) string {
	var s v1alpha1.WebhookSubscription
	if runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &s) != nil {
		return string(metav1.ConditionUnknown)
	}
	return conditionCell(s.Status.Conditions, v1alpha1.ConditionReady)
}

func (o *options) redeliverDirect(ctx context.Context, ns, name string, since time.Time) error {
	rc, err := o.relay()
	if err != nil {
		return err
	}
	q := url.Values{}
	if !since.IsZero() {
		q.Set("since", since.Format(time.RFC3339Nano))
	}
	path := health.SubscriptionPath(health.RedeliverPath, ns, name)
	res, err := postJSON[health.RedeliverResult](ctx, rc, path, q)
	if err != nil {
		return fmt.Errorf("redeliver %s/%s: %w", ns, name, err)
	}
	fmt.Fprintf(o.streams.Out, "replayed %d dead letters of %s/%s (directly on the relay; status.replay is not updated)\n",
		res.Replayed, ns, name)
	return nil
}
