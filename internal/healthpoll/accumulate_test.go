package healthpoll

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/health"
)

var t0 = time.Date(2026, 7, 28, 13, 0, 0, 0, time.UTC)

func at(seconds int) *time.Time {
	t := t0.Add(time.Duration(seconds) * time.Second)
	return &t
}

// report is one relay instance's report with one subscription "ns/a".
func report(instance string, started int, s health.Subscription) health.Report {
	s.ID = "ns/a"
	return health.Report{Instance: instance, StartTime: *at(started), Loaded: true, Revision: "r1",
		Subscriptions: []health.Subscription{s}}
}

func counts(d Delivery) [5]int64 {
	s := d.Status
	return [5]int64{s.Succeeded, s.Failed, s.DeadLettered, s.ConsecutiveFailures, s.PendingRetries}
}

func TestAccumulator_Totals(t *testing.T) {
	tests := []struct {
		name   string
		seed   *v1alpha1.DeliveryStatus
		rounds [][]health.Report
		// want is succeeded, failed, deadLettered, consecutiveFailures, pendingRetries.
		want          [5]int64
		wantSucceeded bool
	}{
		{name: "counts a new instance's figures in full",
			rounds: [][]health.Report{{report("i1", 0, health.Subscription{Succeeded: 3, Failed: 1, LastAttemptTime: at(5), LastSuccessTime: at(5), LastFailureTime: at(4)})}},
			want:   [5]int64{3, 1, 0, 0, 0}, wantSucceeded: true},
		{name: "adds only the difference when the same instance reports again",
			rounds: [][]health.Report{
				{report("i1", 0, health.Subscription{Succeeded: 3})},
				{report("i1", 0, health.Subscription{Succeeded: 3})},
				{report("i1", 0, health.Subscription{Succeeded: 5})},
			},
			want: [5]int64{5, 0, 0, 0, 0}},
		{name: "keeps counting up when a relay restarts from zero",
			rounds: [][]health.Report{
				{report("i1", 0, health.Subscription{Succeeded: 7, Failed: 2, DeadLettered: 1})},
				{report("i2", 100, health.Subscription{Succeeded: 1})},
			},
			want: [5]int64{8, 2, 1, 0, 0}},
		{name: "does not count again an instance that started within the second of the seeded attempt",
			seed: &v1alpha1.DeliveryStatus{Succeeded: 2, LastAttemptTime: &metav1.Time{Time: *at(10)}, LastSuccessTime: &metav1.Time{Time: *at(10)}},
			rounds: [][]health.Report{{{Instance: "i1", StartTime: at(10).Add(700 * time.Millisecond), Loaded: true,
				Subscriptions: []health.Subscription{{ID: "ns/a", Succeeded: 2, LastAttemptTime: at(10), LastSuccessTime: at(10)}}}}},
			want: [5]int64{2, 0, 0, 0, 0}, wantSucceeded: true},
		{name: "sums replicas",
			rounds: [][]health.Report{{
				report("i1", 0, health.Subscription{Succeeded: 2, PendingRetries: 1}),
				report("i2", 0, health.Subscription{Succeeded: 3, Failed: 4, ConsecutiveFailures: 4, PendingRetries: 2, LastFailureTime: at(9), LastAttemptTime: at(9)}),
			}},
			want: [5]int64{5, 4, 0, 4, 3}},
		{name: "extends the run of failures across a restart that reset the relay's own count",
			rounds: [][]health.Report{
				{report("i1", 0, health.Subscription{Failed: 3, ConsecutiveFailures: 3})},
				{report("i2", 50, health.Subscription{Failed: 1, ConsecutiveFailures: 1})},
			},
			want: [5]int64{0, 4, 0, 4, 0}},
		{name: "continues from the status after a manager restart without counting a running relay twice",
			seed: &v1alpha1.DeliveryStatus{Succeeded: 10, Failed: 2, LastAttemptTime: &metav1.Time{Time: *at(60)}, LastSuccessTime: &metav1.Time{Time: *at(60)}},
			rounds: [][]health.Report{
				{report("i1", 0, health.Subscription{Succeeded: 10, Failed: 2})},
				{report("i1", 0, health.Subscription{Succeeded: 11, Failed: 2})},
			},
			want: [5]int64{11, 2, 0, 0, 0}, wantSucceeded: true},
		{name: "counts a relay that started after the status was last written in full",
			seed:   &v1alpha1.DeliveryStatus{Succeeded: 10, LastAttemptTime: &metav1.Time{Time: *at(60)}},
			rounds: [][]health.Report{{report("i2", 120, health.Subscription{Succeeded: 2})}},
			want:   [5]int64{12, 0, 0, 0, 0}},
		{name: "never goes backwards when a report shows less than before",
			rounds: [][]health.Report{
				{report("i1", 0, health.Subscription{Succeeded: 5})},
				{report("i1", 0, health.Subscription{Succeeded: 2})},
			},
			want: [5]int64{5, 0, 0, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			a := newAccumulator()
			if tt.seed != nil {
				a.seed(map[string]Seed{"ns/a": {UID: "u1", Delivery: tt.seed}})
			}
			for i, round := range tt.rounds {
				a.observe(round, t0.Add(time.Duration(i)*time.Minute))
			}
			d, ok := a.delivery("ns/a", "u1")
			g.Expect(ok).To(BeTrue())
			g.Expect(counts(d)).To(Equal(tt.want))
			g.Expect(d.LastSucceeded).To(Equal(tt.wantSucceeded))
		})
	}
}

func TestAccumulator_LatestFailureAndTimes(t *testing.T) {
	g := NewWithT(t)
	a := newAccumulator()
	a.observe([]health.Report{
		report("i1", 0, health.Subscription{Failed: 1, LastAttemptTime: at(10), LastFailureTime: at(10),
			LastFailure: &health.Failure{Reason: "HTTP 500 Internal Server Error", StatusCode: 500, Event: "task.created"}}),
		report("i2", 0, health.Subscription{Failed: 1, LastAttemptTime: at(20), LastFailureTime: at(20),
			LastFailure: &health.Failure{Reason: "timeout after 30s", Event: "task.deleted"}}),
	}, t0)
	d, _ := a.delivery("ns/a", "u1")
	g.Expect(d.Status.LastFailure).To(Equal(&v1alpha1.DeliveryFailure{Reason: "timeout after 30s", Event: "task.deleted"}))
	g.Expect(d.Status.LastAttemptTime.Time).To(Equal(*at(20)))
	g.Expect(d.LastSucceeded).To(BeFalse())
}

func TestAccumulator_SuccessAndFailureWithinOneSecond(t *testing.T) {
	g := NewWithT(t)
	a := newAccumulator()
	fail, ok := t0.Add(100*time.Millisecond), t0.Add(900*time.Millisecond)
	a.observe([]health.Report{report("i1", 0, health.Subscription{Succeeded: 1, Failed: 1,
		LastAttemptTime: &ok, LastSuccessTime: &ok, LastFailureTime: &fail})}, t0)
	d, _ := a.delivery("ns/a", "u1")
	g.Expect(d.LastSucceeded).To(BeTrue())
	g.Expect(d.Status.LastSuccessTime.Time).To(Equal(t0), "status times are whole seconds")
}

func TestAccumulator_RecreatedSubscriptionStartsFromZero(t *testing.T) {
	g := NewWithT(t)
	a := newAccumulator()
	a.observe([]health.Report{report("i1", 0, health.Subscription{Succeeded: 4})}, t0)
	d, _ := a.delivery("ns/a", "old-uid")
	g.Expect(d.Status.Succeeded).To(Equal(int64(4)))

	d, _ = a.delivery("ns/a", "new-uid")
	g.Expect(d.Status.Succeeded).To(BeZero())
	// The relay keeps counting under the same id; only what is new counts.
	a.observe([]health.Report{report("i1", 0, health.Subscription{Succeeded: 5})}, t0)
	d, _ = a.delivery("ns/a", "new-uid")
	g.Expect(d.Status.Succeeded).To(Equal(int64(1)))
}

func TestAccumulator_PendingClearsWhenNoRelayRoutesTheSubscription(t *testing.T) {
	g := NewWithT(t)
	a := newAccumulator()
	a.observe([]health.Report{report("i1", 0, health.Subscription{PendingRetries: 2})}, t0)
	a.observe([]health.Report{{Instance: "i1", StartTime: t0, Loaded: true}}, t0)
	d, _ := a.delivery("ns/a", "u1")
	g.Expect(d.Status.PendingRetries).To(BeZero())
}
