package relay

import (
	"sort"
	"sync"
	"time"

	"github.com/involveo/webhook-operator/internal/health"
	"github.com/involveo/webhook-operator/internal/routing"
)

// stats keeps the delivery figures of every subscription since this process
// started, and the set of deliveries waiting for a retry.
type stats struct {
	mu      sync.Mutex
	subs    map[string]*health.Subscription
	pending map[string]waitingDelivery // by delivery id
}

// waitingDelivery is a delivery this relay saw waiting for its retry. Another
// replica may take the retry, so the entry expires (waitingExpires) rather
// than waiting for a settlement this relay may never see.
type waitingDelivery struct {
	subscription string
	expires      time.Time
}

func newStats() *stats {
	return &stats{subs: map[string]*health.Subscription{}, pending: map[string]waitingDelivery{}}
}

// sub returns the figures of id; the caller holds mu.
func (s *stats) sub(id string) *health.Subscription {
	h, ok := s.subs[id]
	if !ok {
		h = &health.Subscription{ID: id}
		s.subs[id] = h
	}
	return h
}

// attempt records the outcome of one attempt.
func (s *stats) attempt(subID, eventType string, ok bool, statusCode int, reason string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.sub(subID)
	h.LastAttemptTime = &at
	if ok {
		h.LastSuccessTime = &at
		h.ConsecutiveFailures = 0
		h.Succeeded++
		return
	}
	h.LastFailureTime = &at
	h.LastFailure = &health.Failure{Reason: reason, StatusCode: statusCode, Event: eventType, Time: at}
	h.ConsecutiveFailures++
	h.Failed++
}

func (s *stats) deadLettered(subID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sub(subID).DeadLettered++
}

func (s *stats) filtered(subID string, failed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.sub(subID)
	h.Filtered++
	if failed {
		h.FilterErrors++
	}
}

func (s *stats) cancelled(subID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sub(subID).Cancelled++
}

// waiting marks a delivery as waiting for a retry. It is idempotent because a
// delivery can be marked again: a held copy that comes due early (a skewed
// clock) or a redelivery after a crash.
func (s *stats) waiting(deliveryID, subID string, expires time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending[deliveryID] = waitingDelivery{subscription: subID, expires: expires}
}

// prune drops expired entries; the caller holds mu.
func (s *stats) prune(now time.Time) {
	for id, w := range s.pending {
		if now.After(w.expires) {
			delete(s.pending, id)
		}
	}
}

// settled removes a delivery from the waiting set.
func (s *stats) settled(deliveryID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pending, deliveryID)
}

// pendingTotal is the number of deliveries waiting for a retry.
func (s *stats) pendingTotal() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prune(time.Now())
	return len(s.pending)
}

// report builds the health of every subscription in routes, sorted by id.
func (s *stats) report(routes *routing.Routes) []health.Subscription {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prune(time.Now())
	pending := map[string]int64{}
	for _, w := range s.pending {
		pending[w.subscription]++
	}
	out := make([]health.Subscription, 0, routes.Len())
	for _, r := range routes.All() {
		h := health.Subscription{ID: r.ID}
		if cur, ok := s.subs[r.ID]; ok {
			h = *cur
		}
		h.Revision = routes.Revision
		h.Generation = r.Generation
		h.PendingRetries = pending[r.ID]
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
