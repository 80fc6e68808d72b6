package relay

import (
	"testing"
	"time"

	"github.com/involveo/webhook-operator/internal/routing"
)

func pending(sub string) *pendingDelivery { return &pendingDelivery{subscriptionID: sub} }

func TestSlots_WindowHalvesWithoutAnswerAndRegrowsOnSuccess(t *testing.T) {
	s := newSlots(100, 16, 1000, 1)
	route := &routing.Route{ID: "a", Timeout: time.Second}
	steps := []struct {
		o          outcome
		wantWindow int
	}{
		{unanswered, 8}, {unanswered, 4}, {unanswered, 2}, {unanswered, 1}, {unanswered, 1},
		{answered, 1}, {succeeded, 2}, {succeeded, 3}, {aborted, 3}, {unanswered, 1},
	}
	for i, st := range steps {
		if start, _, v := s.admit(pending("a"), route); v != taken || len(start) != 1 {
			t.Fatalf("step %d: delivery not started (verdict %v, start %d)", i, v, len(start))
		}
		s.done("a", route, st.o, time.Millisecond)
		if _, w := s.laneOf("a"); w != st.wantWindow {
			t.Fatalf("step %d (%v): window %d, want %d", i, st.o, w, st.wantWindow)
		}
	}
}

func TestSlots_HangingEndpointHoldsOneWorkerAndParksLittle(t *testing.T) {
	s := newSlots(100, 16, 1000, 1)
	route := &routing.Route{ID: "hang", Timeout: 30 * time.Second}
	for range 16 {
		_, _, _ = s.admit(pending("hang"), route)
	}
	// Every attempt times out: the window falls to one.
	for range 16 {
		s.done("hang", route, unanswered, 30*time.Second)
	}
	if _, window := s.laneOf("hang"); window != 1 {
		t.Fatalf("window %d after 16 timeouts, want 1", window)
	}
	took := 0
	for range 100 {
		if _, _, v := s.admit(pending("hang"), route); v == taken {
			took++
		}
	}
	running, _ := s.laneOf("hang")
	// Parking holds parkHorizon of work at the lane's pace, which is about
	// one attempt per timeout: one running, one parked.
	if running != 1 || took != 2 {
		t.Fatalf("running %d, taken %d of 100; want 1 running and 2 taken", running, took)
	}
}

func TestSlots_FullPoolTakesTurnsAcrossSubscriptions(t *testing.T) {
	s := newSlots(4, 16, 1000, 1)
	route := func(id string) *routing.Route { return &routing.Route{ID: id, Timeout: time.Second} }
	for _, id := range []string{"a", "a", "b", "b"} {
		if start, _, _ := s.admit(pending(id), route(id)); len(start) != 1 {
			t.Fatalf("delivery of %s should start: each may take half of the four workers", id)
		}
	}
	// a waits for its own window, c only for a free worker.
	for _, id := range []string{"a", "c"} {
		if start, _, v := s.admit(pending(id), route(id)); v != taken || len(start) != 0 {
			t.Fatalf("%s should park while the pool is full (verdict %v, start %d)", id, v, len(start))
		}
	}
	// a finishes first, but c has been waiting for a turn: c gets the worker
	// and a goes behind it.
	start, _ := s.done("a", route("a"), succeeded, time.Millisecond)
	if got := subs(start); len(got) != 1 || got[0] != "c" {
		t.Fatalf("first freed worker went to %v, want c", got)
	}
	start, _ = s.done("b", route("b"), succeeded, time.Millisecond)
	if got := subs(start); len(got) != 1 || got[0] != "a" {
		t.Fatalf("second freed worker went to %v, want a", got)
	}
}

func TestSlots_OneSubscriptionTakesAtMostHalfTheWorkers(t *testing.T) {
	s := newSlots(8, 16, 1000, 1)
	route := &routing.Route{ID: "a", Timeout: time.Second, MaxInFlight: 256}
	started := 0
	for range 10 {
		start, _, _ := s.admit(pending("a"), route)
		started += len(start)
	}
	if started != 4 {
		t.Fatalf("started %d of a's deliveries on 8 workers, want 4", started)
	}
}

func TestSlots_ReplicasShareTheParkingBudget(t *testing.T) {
	// Three relays share one consumer's pending set of 60: each may park 10.
	s := newSlots(1, 16, 60, 3)
	parked := 0
	for i := range 40 {
		id := string(rune('a' + i%20))
		if start, _, v := s.admit(pending(id), &routing.Route{ID: id, Timeout: time.Second}); v == taken && len(start) == 0 {
			parked++
		}
	}
	if parked != 10 {
		t.Fatalf("parked %d, want 10 (half of 60 shared by 3 relays)", parked)
	}
}

func TestSlots_SlowingLaneEvictsWhatNoLongerFits(t *testing.T) {
	s := newSlots(100, 4, 1000, 1)
	route := &routing.Route{ID: "a", Timeout: time.Minute}
	for range 4 + 40 {
		_, _, _ = s.admit(pending("a"), route)
	}
	// The endpoint now takes a minute per attempt: parkHorizon covers less
	// than one round of its window, so the parked surplus goes back.
	_, evicted := s.done("a", route, answered, time.Minute)
	if len(evicted) == 0 {
		t.Fatal("nothing evicted after the endpoint slowed down")
	}
	if got := len(s.parkedDeliveries()); got+len(evicted) != 40-1 {
		t.Fatalf("parked %d + evicted %d, want 39 (one started)", got, len(evicted))
	}
}

func TestSlots_FullParkingHoldsTheDispatcherNotTheSubscription(t *testing.T) {
	s := newSlots(1, 16, 40, 1)
	route := func(id string) *routing.Route { return &routing.Route{ID: id, Timeout: time.Second} }
	verdicts := map[verdict]int{}
	for i := range 100 {
		id := string(rune('a' + i%26))
		_, _, v := s.admit(pending(id), route(id))
		verdicts[v]++
	}
	// One runs, 20 (half of MaxAckPending) park, and the rest find the
	// relay full: the dispatcher waits rather than moving them away.
	if verdicts[taken] != 21 || verdicts[relayFull] != 79 || verdicts[laneFull] != 0 {
		t.Fatalf("verdicts %v, want 21 taken and 79 relayFull", verdicts)
	}
	select {
	case <-s.room:
		t.Fatal("room signalled while parking is full")
	default:
	}
	start, _ := s.done("a", route("a"), succeeded, time.Millisecond)
	if len(start) != 1 {
		t.Fatalf("a finished attempt started %d parked deliveries, want 1", len(start))
	}
	select {
	case <-s.room:
	default:
		t.Fatal("no room signalled after a parked delivery started")
	}
}

func subs(ds []*pendingDelivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.subscriptionID)
	}
	return out
}

func TestSlots_LaneWithoutProgressParksLessBeforeItsFirstTimeout(t *testing.T) {
	s := newSlots(100, 16, 100000, 1)
	route := &routing.Route{ID: "a", Timeout: 5 * time.Minute}
	for range 16 + 500 {
		_, _, _ = s.admit(pending("a"), route)
	}
	if n := len(s.parkedDeliveries()); n != 500 {
		t.Fatalf("parked %d with the pace unknown, want 500", n)
	}
	// None of the sixteen attempts has finished in a minute: the lane's
	// pace is at least that, so it may park one round of its window.
	s.lanes["a"].progress = time.Now().Add(-time.Minute)
	_, evicted, v := s.admit(pending("a"), route)
	if v != laneFull || len(evicted) != 500-16 {
		t.Fatalf("verdict %v, evicted %d; want laneFull and %d evicted", v, len(evicted), 500-16)
	}
}

func TestSlots_FullParkingFirstEvictsLanesThatStoppedMakingProgress(t *testing.T) {
	// Four workers: a and b take them all, so c has to park.
	s := newSlots(4, 16, 40, 1)
	for _, id := range []string{"a", "b"} {
		route := &routing.Route{ID: id, Timeout: time.Minute, MaxInFlight: 2}
		for range 2 + 10 {
			_, _, _ = s.admit(pending(id), route)
		}
	}
	if n := len(s.parkedDeliveries()); n != 20 {
		t.Fatalf("parked %d, want 20 (all of parking)", n)
	}
	// Neither lane has finished an attempt for a minute: each may keep one
	// round of its window (2), and gives the rest back when parking is full.
	s.lanes["a"].progress = time.Now().Add(-time.Minute)
	s.lanes["b"].progress = time.Now().Add(-time.Minute)
	_, evicted, v := s.admit(pending("c"), &routing.Route{ID: "c", Timeout: time.Second})
	if v != taken || len(evicted) != 16 {
		t.Fatalf("verdict %v, evicted %d; want c parked after 16 evicted", v, len(evicted))
	}
	if n := len(s.parkedDeliveries()); n != 5 {
		t.Fatalf("parked %d, want 5 (2 each for a and b, c)", n)
	}
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
