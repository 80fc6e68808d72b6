package relay

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/involveo/webhook-operator/internal/health"
)

func subHealth(t testing.TB, r *Relay, id string) health.Subscription {
	t.Helper()
	for _, s := range r.Health().Subscriptions {
		if s.ID == id {
			return s
		}
	}
	t.Fatalf("subscription %s not in the health report", id)
	return health.Subscription{}
}

func TestDelivery_SendsTheExactBytesAndEveryHeader(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(routeYAML("team-a/crm", ep.URL+"/hook", `["task.status_changed"]`,
		"    headers:\n      - {name: X-Tenant, value: acme}\n      - {name: Authorization, value: Bearer t-1}\n")), allowLoopback)
	body := seedEvent(t, "task.status_changed")

	res := tr.mustPost(t, body)
	if res.ID == "" || res.Deliveries != 1 {
		t.Fatalf("ingest answer = %+v, want an id and 1 delivery", res)
	}
	got := ep.next(t, 10*time.Second)
	if !bytes.Equal(got.body, body) {
		t.Fatalf("body differs from what was posted:\n got %q\nwant %q", got.body, body)
	}
	for name, want := range map[string]string{
		"Content-Type":     "application/json",
		"X-Api-Key":        "key-team-a/crm",
		"X-Tenant":         "acme",
		"Authorization":    "Bearer t-1",
		"X-Involveo-Event": "task.status_changed",
	} {
		if v := got.header.Get(name); v != want {
			t.Errorf("header %s = %q, want %q", name, v, want)
		}
	}
	if !strings.HasPrefix(got.header.Get("X-Involveo-Delivery"), res.ID+"-") {
		t.Errorf("X-Involveo-Delivery = %q, want it derived from event id %s", got.header.Get("X-Involveo-Delivery"), res.ID)
	}
	if got.header.Get("User-Agent") == "" {
		t.Error("User-Agent is missing")
	}
	eventually(t, 5*time.Second, "success counted", func() bool { return subHealth(t, tr.Relay, "team-a/crm").Succeeded == 1 })
	h := subHealth(t, tr.Relay, "team-a/crm")
	if h.LastSuccessTime == nil || h.Failed != 0 || h.ConsecutiveFailures != 0 {
		t.Errorf("health after one success = %+v", h)
	}
}

func TestDelivery_FansOutToEveryMatchingSubscription(t *testing.T) {
	exact, wildcard, all, other := newEndpoint(t, 200), newEndpoint(t, 200), newEndpoint(t, 200), newEndpoint(t, 200)
	tr := startRelay(t, table(
		routeYAML("ns/exact", exact.URL, `["task.created"]`, ""),
		routeYAML("ns/wildcard", wildcard.URL, `["task.*"]`, ""),
		routeYAML("ns/all", all.URL, `["*"]`, ""),
		routeYAML("ns/other", other.URL, `["task.deleted"]`, ""),
	), allowLoopback)

	res := tr.mustPost(t, seedEvent(t, "task.created"))
	if res.Deliveries != 3 {
		t.Fatalf("deliveries = %d, want 3", res.Deliveries)
	}
	ids := map[string]bool{}
	for _, ep := range []*endpoint{exact, wildcard, all} {
		ids[ep.next(t, 10*time.Second).header.Get("X-Involveo-Delivery")] = true
	}
	if len(ids) != 3 {
		t.Errorf("delivery ids %v are not distinct per subscription", ids)
	}
	eventually(t, 5*time.Second, "three successes", func() bool {
		return subHealth(t, tr.Relay, "ns/all").Succeeded == 1 && subHealth(t, tr.Relay, "ns/exact").Succeeded == 1
	})
	if n := len(other.got); n != 0 {
		t.Errorf("non-matching subscription got %d deliveries", n)
	}
}

func TestDelivery_OnlyStatus200IsSuccess(t *testing.T) {
	for _, status := range []int{201, 202, 204, 301, 400, 500, 503} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			ep := newEndpoint(t, status)
			tr := startRelay(t, table(routeYAML("ns/s", ep.URL, `["*"]`, "    retry: {maxRetries: 0, interval: 1s}\n")), allowLoopback)
			tr.mustPost(t, seedEvent(t, "task.published"))
			ep.next(t, 10*time.Second)
			eventually(t, 5*time.Second, "dead letter", func() bool { return subHealth(t, tr.Relay, "ns/s").DeadLettered == 1 })
			h := subHealth(t, tr.Relay, "ns/s")
			if h.Succeeded != 0 || h.Failed != 1 || h.LastFailure == nil || h.LastFailure.StatusCode != status {
				t.Fatalf("health = %+v, want one failure with status %d", h, status)
			}
			if h.LastFailure.Event != "task.published" {
				t.Errorf("lastFailure.event = %q", h.LastFailure.Event)
			}
		})
	}
}

func TestDelivery_RetriesAtTheIntervalThenDeadLetters(t *testing.T) {
	const interval = time.Second
	ep := newEndpoint(t, http.StatusInternalServerError)
	tr := startRelay(t, table(routeYAML("ns/flaky", ep.URL, `["*"]`, "    retry: {maxRetries: 2, interval: 1s}\n")), allowLoopback)
	tr.mustPost(t, seedEvent(t, "task.created"))

	var attempts []received
	for range 3 {
		attempts = append(attempts, ep.next(t, 10*time.Second))
	}
	id := attempts[0].header.Get("X-Involveo-Delivery")
	for i, a := range attempts {
		if got := a.header.Get("X-Involveo-Delivery"); got != id {
			t.Errorf("attempt %d has delivery id %q, want %q (stable across retries)", i+1, got, id)
		}
		if i > 0 {
			if gap := a.at.Sub(attempts[i-1].at); gap < interval {
				t.Errorf("attempt %d came %s after the previous one, want at least %s", i+1, gap, interval)
			}
		}
	}
	eventually(t, 5*time.Second, "dead letter", func() bool { return subHealth(t, tr.Relay, "ns/flaky").DeadLettered == 1 })
	h := subHealth(t, tr.Relay, "ns/flaky")
	if h.Failed != 3 || h.ConsecutiveFailures != 3 || h.PendingRetries != 0 {
		t.Errorf("health = %+v, want 3 failures, none pending", h)
	}
	if h.LastFailure == nil || !strings.Contains(h.LastFailure.Reason, "500") {
		t.Errorf("lastFailure = %+v, want it to name 500", h.LastFailure)
	}
	dead, err := tr.queue.js.Stream(t.Context(), deadLettersStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := dead.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("dead-letter stream holds %d messages, want 1", info.State.Msgs)
	}
	msg, err := dead.GetLastMsgForSubject(t.Context(), deadLetterSubjectPrefix+subscriptionToken("ns/flaky"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg.Header.Get(hdrLastError), "500") || msg.Header.Get(hdrAttempt) != "3" {
		t.Errorf("dead letter headers = %v", msg.Header)
	}
	if len(ep.got) != 0 {
		t.Errorf("endpoint got %d attempts beyond maxRetries", len(ep.got))
	}
}

func TestDelivery_RetryUsesTheEditedRoute(t *testing.T) {
	old, moved := newEndpoint(t, http.StatusInternalServerError), newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(routeYAML("ns/s", old.URL, `["*"]`, "    retry: {maxRetries: 3, interval: 1s}\n")), allowLoopback)
	tr.mustPost(t, seedEvent(t, "task.created"))
	first := old.next(t, 10*time.Second)

	tr.SetRoutes(compile(t, table(
		"  - id: ns/s\n    url: "+moved.URL+"\n    events: [\"*\"]\n    apiKey: {value: rotated}\n    retry: {maxRetries: 3, interval: 1s}\n")))
	got := moved.next(t, 10*time.Second)
	if got.header.Get("X-Api-Key") != "rotated" {
		t.Errorf("retry used X-Api-Key %q, want the edited key", got.header.Get("X-Api-Key"))
	}
	if got.header.Get("X-Involveo-Delivery") != first.header.Get("X-Involveo-Delivery") {
		t.Error("delivery id changed with the edit")
	}
	eventually(t, 5*time.Second, "success", func() bool { return subHealth(t, tr.Relay, "ns/s").Succeeded == 1 })
}

func TestDelivery_DeletedSubscriptionCancelsPendingRetries(t *testing.T) {
	gone, kept := newEndpoint(t, http.StatusInternalServerError), newEndpoint(t, http.StatusOK)
	keptRoute := routeYAML("ns/kept", kept.URL, `["*"]`, "")
	tr := startRelay(t, table(routeYAML("ns/gone", gone.URL, `["*"]`, "    retry: {maxRetries: 3, interval: 1s}\n"), keptRoute), allowLoopback)
	tr.mustPost(t, seedEvent(t, "task.created"))
	gone.next(t, 10*time.Second)
	kept.next(t, 10*time.Second)

	tr.SetRoutes(compile(t, table(keptRoute)))
	eventually(t, 10*time.Second, "the pending retry cancelled", func() bool {
		tr.stats.mu.Lock()
		defer tr.stats.mu.Unlock()
		return tr.stats.subs["ns/gone"] != nil && tr.stats.subs["ns/gone"].Cancelled == 1
	})
	if n := len(gone.got); n != 0 {
		t.Errorf("deleted subscription got %d more attempts", n)
	}
	tr.mustPost(t, seedEvent(t, "task.deleted"))
	kept.next(t, 10*time.Second)
	if n := len(gone.got); n != 0 {
		t.Errorf("deleted subscription got %d deliveries of a new event", n)
	}
}

func TestDelivery_RefusesLoopbackUnlessAllowed(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	local := strings.Replace(ep.URL, "127.0.0.1", "localhost", 1)
	tr := startRelay(t, table(
		routeYAML("ns/ip", ep.URL, `["*"]`, "    retry: {maxRetries: 0, interval: 1s}\n"),
		routeYAML("ns/name", local, `["*"]`, "    retry: {maxRetries: 0, interval: 1s}\n"),
	))
	tr.mustPost(t, seedEvent(t, "task.created"))
	for _, id := range []string{"ns/ip", "ns/name"} {
		eventually(t, 10*time.Second, id+" dead-lettered", func() bool { return subHealth(t, tr.Relay, id).DeadLettered == 1 })
		h := subHealth(t, tr.Relay, id)
		if h.LastFailure == nil || !strings.Contains(h.LastFailure.Reason, "not allowed") {
			t.Errorf("%s: lastFailure = %+v, want a refused destination", id, h.LastFailure)
		}
	}
	if n := len(ep.got); n != 0 {
		t.Fatalf("a refused destination was reached %d times", n)
	}
}

func TestDelivery_SlowEndpointDoesNotDelayOthers(t *testing.T) {
	slow, release := newHangingEndpoint(t)
	fast := newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(
		routeYAML("ns/slow", slow.URL, `["task.created"]`, "    timeout: 1m\n"),
		routeYAML("ns/fast", fast.URL, `["task.*"]`, ""),
	), allowLoopback)
	defer close(release)

	const n = 60
	for range n {
		tr.mustPost(t, seedEvent(t, "task.created"))
	}
	// Every slow attempt is still hanging: the fast subscription must get all
	// its deliveries anyway.
	for range n {
		fast.next(t, 20*time.Second)
	}
	if slowRunning, _ := tr.slots.laneOf("ns/slow"); slowRunning > tr.cfg.MaxInFlightPerSubscription {
		t.Fatalf("slow subscription runs %d attempts, cap is %d", slowRunning, tr.cfg.MaxInFlightPerSubscription)
	}
}
