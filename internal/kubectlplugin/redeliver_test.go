package kubectlplugin

import (
	"context"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/involveo/webhook-operator/api/v1alpha1"
)

func TestRedeliver_Annotates(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	requested := now.Format("2006-01-02T15:04:05.000Z07:00")
	threeDaysAgo := now.Add(-72 * time.Hour).Truncate(time.Second)
	berlin := time.FixedZone("CEST", 2*60*60)
	tests := []struct {
		name            string
		existing        map[string]string
		args            []string
		wantAnnotations map[string]string
		wantOut         string
	}{{
		name:            "sets the redeliver annotation to the time of the request and says how to watch the replay",
		wantAnnotations: map[string]string{v1alpha1.AnnotationRedeliver: requested},
		wantOut: "webhooksubscription NS/crm annotated webhooks.involveo.io/redeliver=" + requested + "\n" +
			"replay requested; watch: kubectl get whs crm -n NS -o jsonpath='{.status.replay}'\n",
	}, {
		name: "sets redeliver-since from a duration counted back from now",
		args: []string{"--since", "72h"},
		wantAnnotations: map[string]string{
			v1alpha1.AnnotationRedeliver:      requested,
			v1alpha1.AnnotationRedeliverSince: now.Add(-72 * time.Hour).Format(time.RFC3339Nano),
		},
	}, {
		name: "sets redeliver-since from an RFC 3339 time, in UTC",
		args: []string{"--since", threeDaysAgo.In(berlin).Format(time.RFC3339)},
		wantAnnotations: map[string]string{
			v1alpha1.AnnotationRedeliver:      requested,
			v1alpha1.AnnotationRedeliverSince: threeDaysAgo.Format(time.RFC3339),
		},
		wantOut: "webhooksubscription NS/crm annotated webhooks.involveo.io/redeliver=" + requested + "\n" +
			"  dead letters since " + threeDaysAgo.Format(time.RFC3339) + "\n" +
			"replay requested; watch: kubectl get whs crm -n NS -o jsonpath='{.status.replay}'\n",
	}, {
		name: "removes a redeliver-since left by an earlier request, which would narrow this one",
		existing: map[string]string{
			v1alpha1.AnnotationRedeliver:      "earlier",
			v1alpha1.AnnotationRedeliverSince: "2020-01-01T00:00:00Z",
			"team":                            "a",
		},
		wantAnnotations: map[string]string{v1alpha1.AnnotationRedeliver: requested, "team": "a"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			ns := newNamespace(t)
			sub := newSubscription(t, ns, "crm", "https://crm.example.com/hooks")
			if tt.existing != nil {
				patch := client.MergeFrom(sub.DeepCopy())
				sub.Annotations = tt.existing
				g.Expect(k8s.Patch(context.Background(), sub, patch)).To(Succeed())
			}

			stdout, _ := plugin{kubeconfig: adminKubeconfig, now: func() time.Time { return now }}.
				mustRun(t, append([]string{"redeliver", "crm", "-n", ns}, tt.args...)...)

			g.Expect(k8s.Get(context.Background(), client.ObjectKeyFromObject(sub), sub)).To(Succeed())
			g.Expect(sub.Annotations).To(Equal(tt.wantAnnotations))
			if tt.wantOut != "" {
				g.Expect(stdout).To(Equal(strings.ReplaceAll(tt.wantOut, "NS", ns)))
			}
		})
	}
}

func TestRedeliver_Refuses(t *testing.T) {
	ns := newNamespace(t)
	newSubscription(t, ns, "crm", "https://crm.example.com/hooks")
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{{
		name:    "refuses a --since in the future",
		args:    []string{"redeliver", "crm", "--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)},
		wantErr: "--since " + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + " is in the future",
	}, {
		name:    "refuses a --since that is neither a time nor a duration",
		args:    []string{"redeliver", "crm", "--since", "friday"},
		wantErr: `--since "friday": want an RFC 3339 time (2026-05-01T18:00:00Z) or a positive duration (48h)`,
	}, {
		name:    "refuses a negative duration",
		args:    []string{"redeliver", "crm", "--since", "-1h"},
		wantErr: `--since "-1h": want an RFC 3339 time (2026-05-01T18:00:00Z) or a positive duration (48h)`,
	}, {
		name:    "refuses --wait with --direct, which does not update status",
		args:    []string{"redeliver", "crm", "--direct", "--wait"},
		wantErr: "--wait watches status.replay, which --direct does not update",
	}, {
		name:    "reports a subscription that does not exist",
		args:    []string{"redeliver", "nope"},
		wantErr: `annotate webhooksubscription ` + ns + `/nope: webhooksubscriptions.webhooks.involveo.io "nope" not found`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := asAdmin().run(t, append(tt.args, "-n", ns)...)
			NewWithT(t).Expect(err).To(MatchError(tt.wantErr))
		})
	}
}

// TestRedeliver_Wait plays the manager's part: it writes status.replay when
// it sees the annotation, as the manager does once it has replayed.
func TestRedeliver_Wait(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	sub := newSubscription(t, ns, "crm", "https://crm.example.com/hooks")
	completed := metav1.NewTime(time.Now().UTC().Truncate(time.Second))
	manager := make(chan error, 1)
	go func() {
		manager <- func() error {
			deadline := time.Now().Add(settle)
			for time.Now().Before(deadline) {
				var got v1alpha1.WebhookSubscription
				if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(sub), &got); err != nil {
					return err
				}
				if value := got.Annotations[v1alpha1.AnnotationRedeliver]; value != "" {
					got.Status.Replay = &v1alpha1.ReplayStatus{Requested: value, Replayed: 7, CompletedTime: &completed}
					return k8s.Status().Update(context.Background(), &got)
				}
				time.Sleep(50 * time.Millisecond)
			}
			return context.DeadlineExceeded
		}()
	}()

	stdout, _ := asAdmin().mustRun(t, "redeliver", "crm", "-n", ns, "--wait")

	g.Expect(<-manager).To(Succeed())
	g.Expect(stdout).To(HaveSuffix("replay requested; waiting for the manager\n" +
		"replayed 7 dead letters of " + ns + "/crm (completed " + completed.UTC().Format(time.RFC3339) + ")\n"))
}

func TestRedeliver_WaitGivesUp(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	sub := newSubscription(t, ns, "crm", "https://crm.example.com/hooks")
	sub.Status = v1alpha1.WebhookSubscriptionStatus{
		ObservedGeneration: 1,
		Conditions: []metav1.Condition{
			condition(v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonSecretNotFound, time.Now()),
		},
		Replay: &v1alpha1.ReplayStatus{Requested: "earlier", Replayed: 3},
	}
	g.Expect(k8s.Status().Update(context.Background(), sub)).To(Succeed())

	_, _, err := asAdmin().run(t, "redeliver", "crm", "-n", ns, "--wait", "--timeout", "2s")

	g.Expect(err).To(MatchError(MatchRegexp(
		`^wait for the replay of ` + ns + `/crm: status.replay.requested is still "earlier" after 2s ` +
			`\(Ready: False \(SecretNotFound\)\); the manager replays once the subscription is Ready$`)))
}

func TestRedeliver_Direct(t *testing.T) {
	g := NewWithT(t)
	ep := newEndpoint(t, 503)
	tr := startRelay(t, "127.0.0.1:0", route("shop/crm", ep.URL, noRetries))
	tr.post(t, "task.created")
	tr.post(t, "task.published")
	p := asAdmin()
	eventuallyRows(t, p, 2, "deadletters", "crm", "-n", "shop", "--relay-url", tr.admin)
	ep.next(t)
	ep.next(t)
	ep.status.Store(200)

	stdout, _ := p.mustRun(t, "redeliver", "crm", "-n", "shop", "--direct", "--since", "1h", "--relay-url", tr.admin)

	g.Expect(stdout).To(Equal("replayed 2 dead letters of shop/crm (directly on the relay; status.replay is not updated)\n"))
	events := []string{ep.next(t).header.Get("X-Involveo-Event"), ep.next(t).header.Get("X-Involveo-Event")}
	g.Expect(events).To(ConsistOf("task.created", "task.published"))
	_, stderr := p.mustRun(t, "deadletters", "crm", "-n", "shop", "--relay-url", tr.admin)
	g.Expect(stderr).To(Equal("No dead letters for shop/crm.\n"))
}
