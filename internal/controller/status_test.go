package controller

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/health"
	"github.com/involveo/webhook-operator/internal/healthpoll"
	"github.com/involveo/webhook-operator/internal/render"
)

// viewOf polls a fake relay serving reports, or none when no report is given.
func viewOf(t *testing.T, reports ...health.Report) *healthpoll.View {
	t.Helper()
	var urls []string
	for _, r := range reports {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { writeJSON(t, w, r) }))
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	p := &healthpoll.Poller{Interval: time.Hour, Client: http.DefaultClient, Log: logr.Discard(),
		Targets: func(context.Context) ([]string, error) { return urls, nil }}
	p.Poll(context.Background())
	return p.View()
}

func loadedReport(instance string, generation int64) health.Report {
	return health.Report{Instance: instance, Loaded: true, Revision: "r",
		Subscriptions: []health.Subscription{{ID: "ns/hook", Generation: generation}}}
}

func TestDesiredStatus_Ready(t *testing.T) {
	included := render.Verdict{Included: true}
	tests := []struct {
		name            string
		verdict         render.Verdict
		view            *healthpoll.View
		wantReady       metav1.ConditionStatus
		wantReason      string
		wantReconciling bool
		wantStalled     bool
		wantPending     bool
	}{
		{name: "is Ready when the relay reports this generation",
			verdict: included, view: viewOf(t, loadedReport("i1", 2)),
			wantReady: metav1.ConditionTrue, wantReason: v1alpha1.ReasonRouteLoaded},
		{name: "waits for the relay to load a new generation",
			verdict: included, view: viewOf(t, loadedReport("i1", 1)),
			wantReady: metav1.ConditionFalse, wantReason: v1alpha1.ReasonRoutePending, wantReconciling: true, wantPending: true},
		{name: "waits until every replica has loaded it",
			verdict: included, view: viewOf(t, loadedReport("i1", 2), loadedReport("i2", 1)),
			wantReady: metav1.ConditionFalse, wantReason: v1alpha1.ReasonRoutePending, wantReconciling: true, wantPending: true},
		{name: "says so when no relay answers",
			verdict: included, view: viewOf(t),
			wantReady: metav1.ConditionFalse, wantReason: v1alpha1.ReasonRelayUnavailable, wantReconciling: true, wantPending: true},
		{name: "is Stalled on a spec the relay cannot route",
			verdict: render.Verdict{Reason: v1alpha1.ReasonInvalidSpec, Message: "spec.headers[0]: bad"}, view: viewOf(t, loadedReport("i1", 2)),
			wantReady: metav1.ConditionFalse, wantReason: v1alpha1.ReasonInvalidSpec, wantStalled: true},
		{name: "waits for a missing Secret without stalling",
			verdict: render.Verdict{Reason: v1alpha1.ReasonSecretNotFound, Message: "Secret x not found"}, view: viewOf(t, loadedReport("i1", 2)),
			wantReady: metav1.ConditionFalse, wantReason: v1alpha1.ReasonSecretNotFound, wantReconciling: true},
		{name: "is neither reconciling nor stalled while suspended",
			verdict: render.Verdict{Reason: v1alpha1.ReasonSuspended, Message: "suspended"}, view: viewOf(t),
			wantReady: metav1.ConditionFalse, wantReason: v1alpha1.ReasonSuspended},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			sub := &v1alpha1.WebhookSubscription{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "hook", Generation: 2}}
			// A stale condition from an earlier state must go when it no longer holds.
			sub.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionStalled, Status: metav1.ConditionTrue, Reason: "Old"}}
			st, pending, ok := desiredStatus(sub, tt.verdict, tt.view, healthpoll.Delivery{})
			g.Expect(ok).To(BeTrue())
			g.Expect(pending).To(Equal(tt.wantPending))
			g.Expect(st.ObservedGeneration).To(Equal(int64(2)))
			ready := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady)
			g.Expect(ready.Status).To(Equal(tt.wantReady))
			g.Expect(ready.Reason).To(Equal(tt.wantReason))
			g.Expect(ready.ObservedGeneration).To(Equal(int64(2)))
			g.Expect(meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionReconciling)).To(Equal(tt.wantReconciling))
			g.Expect(meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReconciling) != nil).To(Equal(tt.wantReconciling))
			g.Expect(meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionStalled) != nil).To(Equal(tt.wantStalled))
		})
	}
}

func TestDesiredStatus_LeavesStatusAloneBeforeTheFirstPoll(t *testing.T) {
	g := NewWithT(t)
	sub := &v1alpha1.WebhookSubscription{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "hook", Generation: 1}}
	_, _, ok := desiredStatus(sub, render.Verdict{Included: true}, &healthpoll.View{}, healthpoll.Delivery{})
	g.Expect(ok).To(BeFalse())
}

func TestDesiredStatus_MessagesDoNotNameTheRevision(t *testing.T) {
	// Every subscription's status would be rewritten whenever any other one changed.
	g := NewWithT(t)
	sub := &v1alpha1.WebhookSubscription{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "hook", Generation: 2}}
	a, _, _ := desiredStatus(sub, render.Verdict{Included: true}, viewOf(t, loadedReport("i1", 2)), healthpoll.Delivery{})
	other := loadedReport("i1", 2)
	other.Revision = "another"
	b, _, _ := desiredStatus(sub, render.Verdict{Included: true}, viewOf(t, other), healthpoll.Delivery{})
	for i := range a.Conditions {
		a.Conditions[i].LastTransitionTime, b.Conditions[i].LastTransitionTime = metav1.Time{}, metav1.Time{}
	}
	g.Expect(b.Conditions).To(Equal(a.Conditions))
}

func TestDeliveryHealthy(t *testing.T) {
	at := metav1.NewTime(time.Date(2026, 7, 28, 13, 15, 40, 0, time.UTC))
	tests := []struct {
		name        string
		delivery    healthpoll.Delivery
		wantStatus  metav1.ConditionStatus
		wantReason  string
		wantMessage []string
	}{
		{name: "is Unknown before the first attempt",
			wantStatus: metav1.ConditionUnknown, wantReason: v1alpha1.ReasonNoDeliveries},
		{name: "is True when the last attempt succeeded",
			delivery:   healthpoll.Delivery{LastSucceeded: true, Status: v1alpha1.DeliveryStatus{LastAttemptTime: &at, LastSuccessTime: &at}},
			wantStatus: metav1.ConditionTrue, wantReason: v1alpha1.ReasonDeliverySucceeded, wantMessage: []string{"2026-07-28T13:15:40Z"}},
		{name: "names the status, event type and time of the last failure",
			delivery: healthpoll.Delivery{Status: v1alpha1.DeliveryStatus{LastAttemptTime: &at, LastFailureTime: &at, ConsecutiveFailures: 3,
				LastFailure: &v1alpha1.DeliveryFailure{Reason: "HTTP 500 Internal Server Error", StatusCode: 500, Event: "task.deleted"}}},
			wantStatus: metav1.ConditionFalse, wantReason: v1alpha1.ReasonDeliveryFailing,
			wantMessage: []string{"HTTP 500 Internal Server Error", "task.deleted", "2026-07-28T13:15:40Z", "3 failures in a row"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			c := deliveryHealthy(tt.delivery, nil, 4)
			g.Expect(c.Status).To(Equal(tt.wantStatus))
			g.Expect(c.Reason).To(Equal(tt.wantReason))
			g.Expect(c.ObservedGeneration).To(Equal(int64(4)))
			for _, m := range tt.wantMessage {
				g.Expect(c.Message).To(ContainSubstring(m))
			}
		})
	}
}

func TestEventNotes(t *testing.T) {
	healthy := func(s metav1.ConditionStatus, dead int64) *v1alpha1.WebhookSubscriptionStatus {
		return &v1alpha1.WebhookSubscriptionStatus{
			Conditions: []metav1.Condition{{Type: v1alpha1.ConditionDeliveryHealthy, Status: s, Message: "m"}},
			Delivery:   &v1alpha1.DeliveryStatus{DeadLettered: dead, LastFailure: &v1alpha1.DeliveryFailure{Reason: "HTTP 500"}},
		}
	}
	tests := []struct {
		name          string
		before, after *v1alpha1.WebhookSubscriptionStatus
		want          []string
	}{
		{name: "warns when deliveries start failing", before: healthy(metav1.ConditionTrue, 0), after: healthy(metav1.ConditionFalse, 0),
			want: []string{v1alpha1.ReasonDeliveryFailing}},
		{name: "warns on the first attempt failing", before: &v1alpha1.WebhookSubscriptionStatus{}, after: healthy(metav1.ConditionFalse, 0),
			want: []string{v1alpha1.ReasonDeliveryFailing}},
		{name: "stays quiet while failures go on", before: healthy(metav1.ConditionFalse, 0), after: healthy(metav1.ConditionFalse, 0)},
		{name: "tells of the recovery", before: healthy(metav1.ConditionFalse, 0), after: healthy(metav1.ConditionTrue, 0),
			want: []string{v1alpha1.ReasonDeliveryRecovered}},
		{name: "warns when more deliveries are dead-lettered", before: healthy(metav1.ConditionFalse, 1), after: healthy(metav1.ConditionFalse, 3),
			want: []string{v1alpha1.ReasonDeadLettered}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var reasons []string
			for _, n := range eventNotes(tt.before, tt.after) {
				reasons = append(reasons, n.reason)
			}
			NewWithT(t).Expect(reasons).To(Equal(tt.want))
		})
	}
}

func TestEventLimiter_OnePerReasonAndSubscriptionPerInterval(t *testing.T) {
	g := NewWithT(t)
	l := &eventLimiter{interval: time.Minute}
	now := time.Now()
	g.Expect(l.allow("a", "Failing", now)).To(BeTrue())
	g.Expect(l.allow("a", "Failing", now.Add(30*time.Second))).To(BeFalse())
	g.Expect(l.allow("a", "Recovered", now.Add(30*time.Second))).To(BeTrue())
	g.Expect(l.allow("b", "Failing", now.Add(30*time.Second))).To(BeTrue())
	g.Expect(l.allow("a", "Failing", now.Add(61*time.Second))).To(BeTrue())
}

func TestConfig_Validate(t *testing.T) {
	valid := func() Config {
		c := Config{Namespace: "ops", HealthPollInterval: time.Second}
		c.Relay.Image, c.Relay.Replicas = "img", 1
		return c
	}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{name: "accepts the defaults", mutate: func(*Config) {}},
		{name: "refuses several replicas on the embedded store", mutate: func(c *Config) { c.Relay.Replicas = 3 }, wantErr: "needs --nats-url"},
		{name: "accepts several replicas on external NATS", mutate: func(c *Config) { c.Relay.Replicas, c.Relay.NATSURL = 3, "nats://n:4222" }},
		{name: "refuses an empty image", mutate: func(c *Config) { c.Relay.Image = "" }, wantErr: "--relay-image"},
		{name: "accepts syncing every write", mutate: func(c *Config) { c.Relay.SyncInterval = "always" }},
		{name: "accepts a sync interval", mutate: func(c *Config) { c.Relay.SyncInterval = "1s" }},
		{name: "refuses a malformed sync interval", mutate: func(c *Config) { c.Relay.SyncInterval = "often" }, wantErr: "--relay-sync-interval: want \"always\""},
		{name: "refuses a negative sync interval", mutate: func(c *Config) { c.Relay.SyncInterval = "-1s" }, wantErr: "--relay-sync-interval: a sync interval must be positive"},
		{name: "refuses a sync interval for external NATS", mutate: func(c *Config) { c.Relay.SyncInterval, c.Relay.NATSURL = "always", "nats://n:4222" }, wantErr: "embedded JetStream store only"},
		{name: "accepts NATS Secrets for external NATS", mutate: func(c *Config) {
			c.Relay.NATSURL, c.Relay.NATSCredsSecret, c.Relay.NATSCASecret, c.Relay.NATSClientCertSecret = "tls://n:4222", "creds", "tls", "tls"
		}},
		{name: "refuses a NATS Secret for the embedded store", mutate: func(c *Config) { c.Relay.NATSCASecret = "tls" }, wantErr: "--nats-ca-secret applies to an external JetStream only"},
		{name: "refuses a zero poll interval", mutate: func(c *Config) { c.HealthPollInterval = 0 }, wantErr: "--health-poll-interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			c := valid()
			tt.mutate(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(c.Relay.Namespace).To(Equal("ops"))
				g.Expect(c.CoalesceDelay).To(Equal(DefaultCoalesceDelay))
				return
			}
			g.Expect(err).To(MatchError(ContainSubstring(tt.wantErr)))
		})
	}
}

func writeJSON(t *testing.T, w http.ResponseWriter, v any) {
	if err := json.NewEncoder(w).Encode(v); err != nil {
		t.Error(err)
	}
}
