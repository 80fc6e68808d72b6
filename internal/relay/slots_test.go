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
		if start, taken := s.admit(pending("a"), route); !taken || len(start) != 1 {
			t.Fatalf("step %d: delivery not started (taken %v, start %d)", i, taken, len(start))
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
		s.admit(pending("hang"), route)
	}
	// Every attempt times out: the window falls to one.
	for range 16 {
		s.done("hang", route, unanswered, 30*time.Second)
	}
	running, window := s.laneOf("hang")
	if window != 1 {
		t.Fatalf("window %d after 16 timeouts, want 1", window)
	}
	taken := 0
	for range 100 {
		if _, ok := s.admit(pending("hang"), route); ok {
			taken++
		}
	}
	running, _ = s.laneOf("hang")
	// Parking holds parkHorizon of work at the lane's pace, which is about
	// one attempt per timeout: one running, one parked.
	if running != 1 || taken != 2 {
		t.Fatalf("running %d, taken %d of 100; want 1 running and 2 taken", running, taken)
	}
}

func TestSlots_FullPoolTakesTurnsAcrossSubscriptions(t *testing.T) {
	s := newSlots(2, 16, 1000, 1)
	a := &routing.Route{ID: "a", Timeout: time.Second}
	b := &routing.Route{ID: "b", Timeout: time.Second}
	for range 2 {
		if start, _ := s.admit(pending("a"), a); len(start) != 1 {
			t.Fatal("first two deliveries of a should start")
		}
	}
	for range 3 {
		if start, taken := s.admit(pending("a"), a); !taken || len(start) != 0 {
			t.Fatalf("a's surplus should park while the pool is full (taken %v, start %d)", taken, len(start))
		}
	}
	if start, taken := s.admit(pending("b"), b); !taken || len(start) != 0 {
		t.Fatalf("b should park while the pool is full (taken %v, start %d)", taken, len(start))
	}
	// a queued first, but a finishing attempt of a sends a to the back: b
	// gets the freed worker.
	start, _ := s.done("a", a, succeeded, time.Millisecond)
	if len(start) != 1 || start[0].subscriptionID != "a" {
		t.Fatalf("first freed worker went to %v, want a (queued first)", subs(start))
	}
	start, _ = s.done("a", a, succeeded, time.Millisecond)
	if len(start) != 1 || start[0].subscriptionID != "b" {
		t.Fatalf("second freed worker went to %v, want b", subs(start))
	}
}

func TestSlots_SlowingLaneEvictsWhatNoLongerFits(t *testing.T) {
	s := newSlots(100, 4, 1000, 1)
	route := &routing.Route{ID: "a", Timeout: time.Minute}
	for range 4 + 40 {
		s.admit(pending("a"), route)
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

func TestSlots_ParkingStaysWithinHalfOfMaxAckPending(t *testing.T) {
	s := newSlots(1, 16, 40, 1)
	taken := 0
	for i := range 100 {
		id := string(rune('a' + i%26))
		if _, ok := s.admit(pending(id), &routing.Route{ID: id, Timeout: time.Second}); ok {
			taken++
		}
	}
	if want := 1 + 20; taken != want {
		t.Fatalf("taken %d, want %d (one running, 20 parked)", taken, want)
	}
}

func subs(ds []*pendingDelivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.subscriptionID)
	}
	return out
}
