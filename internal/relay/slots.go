package relay

import (
	"sync"
	"time"

	"github.com/involveo/webhook-operator/internal/routing"
)

const (
	// parkHorizon is how much work a subscription may have parked in memory,
	// in time at its observed pace: enough to keep its window busy between
	// pulls, short enough that a slowing endpoint's surplus soon goes back to
	// JetStream instead of waiting here.
	parkHorizon = 10 * time.Second
	// initialLatency is the pace assumed for a subscription before its first
	// attempt finishes.
	initialLatency = time.Second
	// latencyWeight is the weight of the newest attempt in a lane's moving
	// average of attempt durations.
	latencyWeight = 0.2
)

// slots decides which deliveries run now, so that no endpoint, however slow,
// takes more than its share of the relay:
//
//   - a subscription runs at most its window of attempts at once. The window
//     starts at the subscription's in-flight cap, halves whenever an attempt
//     gets no answer at all (timeout, refused, reset) and grows by one per
//     success: an endpoint that hangs ends up holding one attempt, not
//     sixteen, and one that recovers gets its full cap back within a few
//     deliveries;
//   - all subscriptions together run at most Workers attempts; when that is
//     the limit, subscriptions waiting for a slot take turns (round robin);
//   - a delivery that may not start yet is parked in memory, up to
//     parkHorizon of work at the subscription's pace and half of the
//     consumer's MaxAckPending in all; whatever does not fit goes back to the
//     caller, which moves it out of the consumer's pending set.
//
// Nothing blocks: the dispatcher only counts, and a finishing attempt hands
// its goroutine to the next parked delivery.
type slots struct {
	mu sync.Mutex
	// workers bounds running attempts; parkBudget bounds parked deliveries,
	// which hold places in the consumer's MaxAckPending.
	workers, parkBudget int
	// limit is the default in-flight cap; replicas divides route rates.
	limit    int
	replicas int
	running  int
	parked   int
	lanes    map[string]*lane
	// turns lists subscriptions with parked deliveries that wait for a free
	// worker rather than for their own window.
	turns []string
}

// lane is one subscription's share.
type lane struct {
	running int
	// window is the adaptive cap, 0 until the lane is first used.
	window int
	// latency is the moving average of the lane's attempt durations.
	latency time.Duration
	parked  []*pendingDelivery
	// queued is set while the lane is in turns.
	queued bool
}

func newSlots(workers, limit, maxAckPending, replicas int) *slots {
	return &slots{
		workers: max(workers, 1), limit: max(limit, 1), replicas: max(replicas, 1),
		// Half of the consumer's pending set stays free for deliveries that
		// can start, however many are parked.
		parkBudget: max(maxAckPending/2, 1),
		lanes:      map[string]*lane{},
	}
}

// limitOf is the route's own cap, or the relay's default.
func (s *slots) limitOf(route *routing.Route) int {
	if route != nil && route.MaxInFlight > 0 {
		return route.MaxInFlight
	}
	return s.limit
}

func (s *slots) lane(id string, limit int) *lane {
	l, ok := s.lanes[id]
	if !ok {
		l = &lane{window: limit, latency: initialLatency}
		s.lanes[id] = l
	}
	l.window = min(l.window, limit)
	return l
}

// parkLimit is how many deliveries a lane may park: parkHorizon of work at
// its pace, and for a rate-limited route no more than its share of the rate
// starts in that time.
func (s *slots) parkLimit(l *lane, route *routing.Route) int {
	n := l.window * max(1, int(parkHorizon/max(l.latency, time.Millisecond)))
	if route != nil && route.RatePerSecond > 0 {
		perRelay := route.RatePerSecond / float64(s.replicas)
		n = min(n, max(1, int(perRelay*parkHorizon.Seconds())))
	}
	return min(n, s.parkBudget)
}

// admit takes d: it returns the deliveries to start now (d itself, or
// parked ones whose turn came) and whether d was taken at all. A delivery
// that was not taken fits neither a slot nor the parking: the caller moves
// it out of the way.
func (s *slots) admit(d *pendingDelivery, route *routing.Route) (start []*pendingDelivery, taken bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lane(d.subscriptionID, s.limitOf(route))
	if l.running < l.window && s.running < s.workers && len(l.parked) == 0 {
		l.running++
		s.running++
		return []*pendingDelivery{d}, true
	}
	if len(l.parked) >= s.parkLimit(l, route) || s.parked >= s.parkBudget {
		return nil, false
	}
	d.parked = true
	l.parked = append(l.parked, d)
	s.parked++
	if l.running < l.window {
		// Only the pool holds it back: take a turn for the next free worker.
		s.enqueue(d.subscriptionID, l)
	}
	return s.fill(), true
}

func (s *slots) enqueue(id string, l *lane) {
	if !l.queued {
		l.queued = true
		s.turns = append(s.turns, id)
	}
}

// outcome is what an attempt says about its endpoint's capacity.
type outcome int

const (
	// answered: the endpoint responded (any status); the window stays.
	answered outcome = iota
	// succeeded: a 200; the window grows by one.
	succeeded
	// unanswered: a timeout or a transport error; the window halves.
	unanswered
	// aborted: the attempt did not run to an outcome (shutdown, cancelled).
	aborted
)

// done ends an attempt of the lane of id (route is its current route, nil
// once deleted). It returns the deliveries to start now, the caller's
// goroutine running the first and new goroutines the rest, and those parked
// beyond the lane's new limit, for the caller to move out of the way. The
// finishing lane goes to the back of the turns, so a busy subscription
// cannot keep a worker from the others.
func (s *slots) done(id string, route *routing.Route, o outcome, took time.Duration) (start, evicted []*pendingDelivery) {
	s.mu.Lock()
	defer s.mu.Unlock()
	limit := s.limitOf(route)
	l := s.lane(id, limit)
	switch o {
	case succeeded:
		l.window = min(l.window+1, limit)
	case unanswered:
		l.window = max(l.window/2, 1)
	}
	if o != aborted {
		l.latency += time.Duration(latencyWeight * float64(took-l.latency))
	}
	l.running--
	s.running--
	if keep := s.parkLimit(l, route); len(l.parked) > keep {
		evicted = append(evicted, l.parked[keep:]...)
		clear(l.parked[keep:])
		l.parked = l.parked[:keep]
		s.parked -= len(evicted)
	}
	if len(l.parked) > 0 && l.running < l.window {
		s.enqueue(id, l)
	}
	start = s.fill()
	if l.running == 0 && len(l.parked) == 0 && !l.queued && l.window >= limit {
		// Idle with its full window: nothing to remember, and a deleted
		// subscription leaves nothing behind. A lane with a shrunk window is
		// kept until its endpoint shows it recovered.
		delete(s.lanes, id)
	}
	return start, evicted
}

// fill starts parked deliveries, one lane at a time in turn, while the pool
// has room.
func (s *slots) fill() []*pendingDelivery {
	var start []*pendingDelivery
	for s.running < s.workers && len(s.turns) > 0 {
		id := s.turns[0]
		s.turns = s.turns[1:]
		l := s.lanes[id]
		l.queued = false
		// The lane's window may have shrunk since it queued; its next
		// finishing attempt queues it again.
		if len(l.parked) == 0 || l.running >= l.window {
			continue
		}
		start = append(start, l.parked[0])
		l.parked[0] = nil
		l.parked = l.parked[1:]
		s.parked--
		l.running++
		s.running++
		if len(l.parked) > 0 && l.running < l.window {
			s.enqueue(id, l)
		}
	}
	return start
}

// parkedDeliveries lists every parked delivery, for keeping them from
// JetStream's redelivery while they wait.
func (s *slots) parkedDeliveries() []*pendingDelivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*pendingDelivery, 0, s.parked)
	for _, l := range s.lanes {
		out = append(out, l.parked...)
	}
	return out
}

// laneOf reports the attempts a subscription runs and its window.
func (s *slots) laneOf(id string) (running, window int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.lanes[id]; ok {
		return l.running, l.window
	}
	return 0, 0
}
