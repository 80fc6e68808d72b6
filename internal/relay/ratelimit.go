package relay

import (
	"context"
	"sync"

	"golang.org/x/time/rate"

	"github.com/involveo/webhook-operator/internal/routing"
)

// limiters holds one token bucket per rate-limited subscription. Each relay
// enforces its share of the subscription's rate (rate ÷ --replicas): exact
// while JetStream spreads the work evenly over the replicas, an
// approximation otherwise — no cross-replica coordination on the hot path.
type limiters struct {
	mu       sync.Mutex
	replicas int
	byID     map[string]*rate.Limiter
}

func newLimiters(replicas int) *limiters {
	return &limiters{replicas: max(replicas, 1), byID: map[string]*rate.Limiter{}}
}

// wait blocks until the route may start an attempt. Only the route's own
// in-flight slots wait, so other subscriptions are not held up.
func (l *limiters) wait(ctx context.Context, route *routing.Route) error {
	if route.RatePerSecond <= 0 {
		return nil
	}
	return l.get(route).Wait(ctx)
}

func (l *limiters) get(route *routing.Route) *rate.Limiter {
	limit := rate.Limit(route.RatePerSecond / float64(l.replicas))
	// A burst of a tenth of a second's worth keeps any ten-second window
	// within a few percent of the rate.
	burst := max(1, int(float64(limit)/10))
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.byID[route.ID]
	if !ok {
		lim = rate.NewLimiter(limit, burst)
		l.byID[route.ID] = lim
	} else if lim.Limit() != limit || lim.Burst() != burst {
		lim.SetLimit(limit)
		lim.SetBurst(burst)
	}
	return lim
}
