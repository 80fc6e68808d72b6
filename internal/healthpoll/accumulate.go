package healthpoll

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/health"
)

// instanceTTL is how long the figures last seen from a relay instance are kept after
// it stops answering. Instance ids are chosen per process, so an instance gone that
// long has been replaced; forgetting it sooner would count its figures again if it
// came back from a network partition.
const instanceTTL = time.Hour

// Seed is a subscription's status when the manager starts.
type Seed struct {
	UID      types.UID
	Delivery *v1alpha1.DeliveryStatus
}

// Delivery is a subscription's delivery figures summed over relay replicas and
// restarts.
type Delivery struct {
	// Status is what status.delivery shows. Times are whole seconds, as the API stores
	// them, so that an unchanged status compares equal.
	Status v1alpha1.DeliveryStatus
	// LastSucceeded says whether the latest attempt succeeded, decided at full time
	// precision (a success and a failure within one second are told apart).
	LastSucceeded bool
}

// accumulator keeps running totals per subscription so that counters never go
// backwards, although each relay instance counts from zero when it starts.
//
// Per instance it remembers the figures last seen for every subscription; what a report
// adds is the difference to those, or everything for an instance seen for the first
// time. A restarted relay is a new instance, so its figures add to the totals instead
// of replacing them.
type accumulator struct {
	totals    map[string]*total
	instances map[string]*instance
}

type total struct {
	uid types.UID
	// seededAttempt is the status's lastAttemptTime when the manager started. A relay
	// instance that started before it was already counted by the previous manager.
	seededAttempt *time.Time
	delivery      Delivery
	// lastAttempt is the latest attempt at full precision.
	lastAttempt time.Time
}

type instance struct {
	lastSeen time.Time
	last     map[string]health.Subscription
}

func newAccumulator() *accumulator {
	return &accumulator{totals: map[string]*total{}, instances: map[string]*instance{}}
}

// seed starts the totals from the subscriptions' existing status.
func (a *accumulator) seed(seeds map[string]Seed) {
	for id, s := range seeds {
		t := &total{uid: s.UID}
		if s.Delivery != nil {
			t.delivery.Status = *s.Delivery.DeepCopy()
			if at := s.Delivery.LastAttemptTime; at != nil {
				t.seededAttempt = &at.Time
				t.lastAttempt = at.Time
			}
			t.delivery.LastSucceeded = succeededLast(s.Delivery)
		}
		a.totals[id] = t
	}
}

func succeededLast(d *v1alpha1.DeliveryStatus) bool {
	return d.LastSuccessTime != nil && (d.LastFailureTime == nil || !d.LastSuccessTime.Before(d.LastFailureTime))
}

// observe adds what the reports say beyond what was seen before. Reports seen before
// add nothing, so every fresh report can be passed on every round.
func (a *accumulator) observe(reports []health.Report, now time.Time) {
	type sums struct{ consecutive, pending, succeeded, failed int64 }
	perSub := map[string]*sums{}
	for _, r := range reports {
		inst := a.instances[r.Instance]
		if inst == nil {
			inst = &instance{last: map[string]health.Subscription{}}
			a.instances[r.Instance] = inst
		}
		inst.lastSeen = now
		for _, s := range r.Subscriptions {
			t := a.total(s.ID)
			prev, seen := inst.last[s.ID]
			// Status times are whole seconds: an instance that started within the
			// second of the seeded attempt may have made it, so it counts as seen.
			if !seen && t.seededAttempt != nil && !r.StartTime.Truncate(time.Second).After(*t.seededAttempt) {
				// The previous manager wrote this instance's figures into the status we
				// seeded from; counting them again would inflate the totals.
				prev = s
			}
			dSucceeded, dFailed := positive(s.Succeeded-prev.Succeeded), positive(s.Failed-prev.Failed)
			t.delivery.Status.Succeeded += dSucceeded
			t.delivery.Status.Failed += dFailed
			t.delivery.Status.DeadLettered += positive(s.DeadLettered - prev.DeadLettered)
			t.mergeTimes(s)
			inst.last[s.ID] = s

			sum := perSub[s.ID]
			if sum == nil {
				sum = &sums{}
				perSub[s.ID] = sum
			}
			sum.consecutive += s.ConsecutiveFailures
			sum.pending += s.PendingRetries
			sum.succeeded += dSucceeded
			sum.failed += dFailed
		}
	}
	if len(reports) > 0 {
		for id, t := range a.totals {
			sum := perSub[id]
			if sum == nil {
				// Not routed by any relay: pending deliveries were cancelled.
				t.delivery.Status.PendingRetries = 0
				continue
			}
			t.delivery.Status.PendingRetries = sum.pending
			// Each relay counts failures since its own last success. After a success
			// anywhere their sum is the best figure; without one, every new failure
			// extends the run, which a restarted relay's reset count would hide.
			if sum.succeeded > 0 {
				t.delivery.Status.ConsecutiveFailures = sum.consecutive
			} else {
				t.delivery.Status.ConsecutiveFailures += sum.failed
			}
		}
	}
	for id, inst := range a.instances {
		if now.Sub(inst.lastSeen) > instanceTTL {
			delete(a.instances, id)
		}
	}
}

func (a *accumulator) total(id string) *total {
	t := a.totals[id]
	if t == nil {
		t = &total{}
		a.totals[id] = t
	}
	return t
}

// mergeTimes keeps the latest of each time, and the failure that goes with the latest
// failure time.
func (t *total) mergeTimes(s health.Subscription) {
	d := &t.delivery.Status
	d.LastSuccessTime = later(d.LastSuccessTime, s.LastSuccessTime)
	if s.LastFailureTime != nil && s.LastFailure != nil && (d.LastFailureTime == nil || seconds(*s.LastFailureTime).After(d.LastFailureTime.Time)) {
		d.LastFailure = &v1alpha1.DeliveryFailure{
			Reason:     s.LastFailure.Reason,
			StatusCode: int32(s.LastFailure.StatusCode),
			Event:      s.LastFailure.Event,
		}
	}
	d.LastFailureTime = later(d.LastFailureTime, s.LastFailureTime)
	if s.LastAttemptTime != nil && s.LastAttemptTime.After(t.lastAttempt) {
		t.lastAttempt = *s.LastAttemptTime
		t.delivery.LastSucceeded = s.LastSuccessTime != nil && s.LastSuccessTime.Equal(*s.LastAttemptTime)
	}
	d.LastAttemptTime = later(d.LastAttemptTime, s.LastAttemptTime)
}

// delivery returns the figures of id for the subscription with uid. A subscription
// deleted and created again under the same name starts from zero.
func (a *accumulator) delivery(id string, uid types.UID) (Delivery, bool) {
	t := a.totals[id]
	if t == nil {
		return Delivery{}, false
	}
	if t.uid != uid {
		if t.uid != "" {
			*t = total{}
		}
		t.uid = uid
	}
	out := t.delivery
	out.Status = *t.delivery.Status.DeepCopy()
	return out, true
}

// retain forgets the totals of subscriptions that no longer exist.
func (a *accumulator) retain(ids map[string]bool) {
	for id := range a.totals {
		if !ids[id] {
			delete(a.totals, id)
		}
	}
}

func later(have *metav1.Time, reported *time.Time) *metav1.Time {
	if reported == nil {
		return have
	}
	r := seconds(*reported)
	if have != nil && !r.After(have.Time) {
		return have
	}
	return &metav1.Time{Time: r}
}

// seconds truncates to what the API stores (RFC 3339, whole seconds, UTC).
func seconds(t time.Time) time.Time { return t.UTC().Truncate(time.Second) }

func positive(n int64) int64 { return max(n, 0) }
