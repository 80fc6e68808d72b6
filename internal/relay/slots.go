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
	initialLatency = 100 * time.Millisecond
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
//     parkHorizon of work at the subscription's pace: what a subscription
//     cannot park goes back to the caller, which moves it out of the
//     consumer's pending set (that subscription is the bottleneck);
//   - parking holds at most half of the consumer's MaxAckPending in all:
//     when that is full the relay as a whole is the bottleneck, and the
//     dispatcher waits for room instead of pulling more.
//
// The dispatcher only counts, and a finishing attempt hands its goroutine to
// the next parked delivery.
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
	// room wakes a dispatcher that found parking full.
	room chan struct{}
	// turns lists subscriptions with parked deliveries that wait for a free
	// worker rather than for their own window.
	turns []string
}

// lane is one subscription's share.
type lane struct {
	running int
	// window is the adaptive cap, 0 until the lane is first used.
	window int
	// latency is the moving average of the lane's attempt durations, 0
	// until one finished.
	latency time.Duration
	// progress is when an attempt last finished, or the lane last started
	// running: an endpoint that hangs shows as no progress long before its
	// first timeout updates latency.
	progress time.Time
	parked   []*pendingDelivery
	// queued is set while the lane is in turns.
	queued bool
	// route is the lane's route when it last admitted a delivery.
	route *routing.Route
}

func newSlots(workers, limit, maxAckPending, replicas int) *slots {
	return &slots{
		workers: max(workers, 1), limit: max(limit, 1), replicas: max(replicas, 1),
		// Half of the consumer's pending set stays free for deliveries that
		// can start, however many are parked. The pending set belongs to the
		// one consumer all replicas share, so each parks its share of half.
		parkBudget: max(maxAckPending/(2*max(replicas, 1)), 1),
		lanes:      map[string]*lane{},
		room:       make(chan struct{}, 1),
	}
}

// limitOf is the route's own cap, or the relay's default, and never more
// than half of the workers: one subscription, however busy or stuck, leaves
// the other half to the rest.
func (s *slots) limitOf(route *routing.Route) int {
	limit := s.limit
	if route != nil && route.MaxInFlight > 0 {
		limit = route.MaxInFlight
	}
	return max(min(limit, s.workers/2), 1)
}

func (s *slots) lane(id string, limit int) *lane {
	l, ok := s.lanes[id]
	if !ok {
		l = &lane{window: limit}
		s.lanes[id] = l
	}
	l.window = min(l.window, limit)
	return l
}

// parkLimit is how many deliveries a lane may park: parkHorizon of work at
// its pace, for a rate-limited route no more than its share of the rate
// starts in that time, and never more than half of all parking, so that one
// subscription cannot fill it.
func (s *slots) parkLimit(l *lane, route *routing.Route, now time.Time) int {
	pace := l.latency
	if pace == 0 {
		pace = initialLatency
	}
	if l.running > 0 {
		pace = max(pace, now.Sub(l.progress))
	}
	n := l.window * max(1, int(parkHorizon/max(pace, time.Millisecond)))
	if route != nil && route.RatePerSecond > 0 {
		perRelay := route.RatePerSecond / float64(s.replicas)
		n = min(n, max(1, int(perRelay*parkHorizon.Seconds())))
	}
	return min(n, max(s.parkBudget/2, 1))
}

// evict takes from a lane what it parked beyond its limit.
func (s *slots) evict(l *lane, limit int) []*pendingDelivery {
	if len(l.parked) <= limit {
		return nil
	}
	evicted := append([]*pendingDelivery(nil), l.parked[limit:]...)
	clear(l.parked[limit:])
	l.parked = l.parked[:limit]
	s.parked -= len(evicted)
	s.roomSignal()
	return evicted
}

// sweepAll evicts from every lane what it parked beyond its current limit.
func (s *slots) sweepAll() []*pendingDelivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sweep(time.Now())
}

// forget drops the idle lanes of subscriptions that left the routing table,
// with the windows they had shrunk to.
func (s *slots) forget(keep func(id string) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, l := range s.lanes {
		if l.running == 0 && len(l.parked) == 0 && !l.queued && !keep(id) {
			delete(s.lanes, id)
		}
	}
}

// sweep evicts from every lane what it parked beyond its current limit.
func (s *slots) sweep(now time.Time) []*pendingDelivery {
	var evicted []*pendingDelivery
	for _, l := range s.lanes {
		if len(l.parked) > 0 {
			evicted = append(evicted, s.evict(l, s.parkLimit(l, l.route, now))...)
		}
	}
	return evicted
}

// startLane counts a started attempt of l.
func (s *slots) startLane(l *lane, now time.Time) {
	if l.running == 0 {
		l.progress = now
	}
	l.running++
	s.running++
}

// verdict is what admit did with a delivery.
type verdict int

const (
	// taken: started or parked; start lists what to run now.
	taken verdict = iota
	// laneFull: its subscription has parked all it may; the caller moves it
	// out of the way.
	laneFull
	// relayFull: the relay as a whole has parked all it may; the caller
	// waits on room and tries again, which holds back pulling more.
	relayFull
)

// admit takes d if it can: it returns the deliveries to start now (d
// itself, or parked ones whose turn came), those its lane parked beyond a
// limit that shrank (to be moved out of the way) and the verdict.
func (s *slots) admit(d *pendingDelivery, route *routing.Route) (start, evicted []*pendingDelivery, v verdict) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	l := s.lane(d.subscriptionID, s.limitOf(route))
	l.route = route
	if l.running < l.window && s.running < s.workers && len(l.parked) == 0 {
		s.startLane(l, now)
		return []*pendingDelivery{d}, nil, taken
	}
	limit := s.parkLimit(l, route, now)
	evicted = s.evict(l, limit)
	if len(l.parked) >= limit {
		return nil, evicted, laneFull
	}
	// The relay's own limit next. Lanes that stopped making progress since
	// they parked give back what no longer fits them first; if every lane is
	// within its limit, all are busy, waiting is right for every
	// subscription, and postponing would only churn.
	if s.parked >= s.parkBudget {
		evicted = append(evicted, s.sweep(now)...)
		if s.parked >= s.parkBudget {
			return nil, evicted, relayFull
		}
	}
	d.parked = true
	l.parked = append(l.parked, d)
	s.parked++
	if l.running < l.window {
		// Only the pool holds it back: take a turn for the next free worker.
		s.enqueue(d.subscriptionID, l)
	}
	return s.fill(now), evicted, taken
}

// room is signalled when parking has room again after relayFull.
func (s *slots) roomSignal() {
	if s.parked < s.parkBudget {
		select {
		case s.room <- struct{}{}:
		default:
		}
	}
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
	now := time.Now()
	limit := s.limitOf(route)
	l := s.lane(id, limit)
	switch o {
	case succeeded:
		l.window = min(l.window+1, limit)
	case unanswered:
		l.window = max(l.window/2, 1)
	}
	if o != aborted {
		if l.latency == 0 {
			l.latency = took
		} else {
			l.latency += time.Duration(latencyWeight * float64(took-l.latency))
		}
	}
	l.running--
	s.running--
	l.progress = now
	evicted = s.evict(l, s.parkLimit(l, route, now))
	if len(l.parked) > 0 && l.running < l.window {
		s.enqueue(id, l)
	}
	start = s.fill(now)
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
func (s *slots) fill(now time.Time) []*pendingDelivery {
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
		s.roomSignal()
		s.startLane(l, now)
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
