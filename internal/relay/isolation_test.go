package relay

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The deliver consumer is shared by every subscription: these tests check
// that what waits (a retry not yet due, the backlog of an endpoint that
// hangs) waits outside its pending set, where it cannot starve the others.

func consumerPending(t *testing.T, tr *testRelay) int {
	t.Helper()
	info, err := tr.queue.deliver.Info(context.Background())
	if err != nil {
		t.Fatalf("consumer info: %v", err)
	}
	return info.NumAckPending
}

func scheduledCount(t *testing.T, tr *testRelay) uint64 {
	t.Helper()
	info, err := tr.queue.deliveries.Info(context.Background(), jetstream.WithSubjectFilter(scheduledSubjectPrefix+">"))
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

func TestDelivery_WaitingRetryHoldsNoPlaceInThePendingSet(t *testing.T) {
	ep := newEndpoint(t, http.StatusInternalServerError)
	tr := startRelay(t, table(routeYAML("ns/a", ep.URL, `["*"]`, "    retry: {maxRetries: 1, interval: 4s}\n")), allowLoopback)
	tr.mustPost(t, seedEvent(t, "task.created"))
	first := ep.next(t, 10*time.Second)
	ep.setStatus(http.StatusOK)

	// The first attempt is acknowledged just after its retry is stored.
	eventually(t, 3*time.Second, "retry waiting as a scheduled message, not in the consumer's pending set", func() bool {
		return scheduledCount(t, tr) == 1 && consumerPending(t, tr) == 0
	})
	second := ep.next(t, 15*time.Second)
	if gap := second.at.Sub(first.at); gap < 4*time.Second {
		t.Fatalf("retry came %s after the first attempt, interval is 4s", gap)
	}
	if a, b := first.header.Get("X-Involveo-Delivery"), second.header.Get("X-Involveo-Delivery"); a != b || a == "" {
		t.Fatalf("delivery ids %q and %q, want one stable id", a, b)
	}
	eventually(t, 5*time.Second, "scheduled message gone once fired", func() bool { return scheduledCount(t, tr) == 0 })
}

func TestDelivery_HangingEndpointCannotFillThePendingSet(t *testing.T) {
	const maxAckPending = 40
	hang, release := newHangingEndpoint(t)
	healthy := newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(
		routeYAML("ns/hang", hang.URL, `["task.created"]`, "    timeout: 1m\n"),
		routeYAML("ns/healthy", healthy.URL, `["task.*"]`, ""),
	), allowLoopback, func(c *Config) { c.Queue.MaxAckPending = maxAckPending })
	defer close(release)

	// Five times the consumer's pending set for the hanging endpoint alone.
	const n = 5 * maxAckPending
	for range n {
		tr.mustPost(t, seedEvent(t, "task.created"))
	}
	began := time.Now()
	for range n {
		healthy.next(t, 30*time.Second)
	}
	t.Logf("healthy subscription got its %d deliveries in %s", n, time.Since(began).Round(time.Millisecond))
	if running, _ := tr.slots.laneOf("ns/hang"); running > tr.cfg.MaxInFlightPerSubscription {
		t.Fatalf("hanging subscription runs %d attempts, cap is %d", running, tr.cfg.MaxInFlightPerSubscription)
	}
	if scheduledCount(t, tr) == 0 {
		t.Fatal("the hanging endpoint's backlog is not waiting as scheduled messages")
	}
}

// holdEventForRoom fills the deliveries stream of a relay whose limit is one
// byte with a retry waiting an hour, then posts task.deleted and waits until
// fan-out holds it for want of room. The endpoint answers 200 from then on.
func holdEventForRoom(t *testing.T, tr *testRelay, ep *endpoint) {
	t.Helper()
	tr.mustPost(t, seedEvent(t, "task.created"))
	ep.next(t, 10*time.Second)
	eventually(t, 10*time.Second, "deliveries marked full", tr.queue.deliveriesFull.Load)
	ep.setStatus(http.StatusOK)
	tr.mustPost(t, seedEvent(t, "task.deleted"))
	eventually(t, 10*time.Second, "second event held by fan-out", func() bool {
		info, err := tr.queue.fanout.Info(context.Background())
		return err == nil && info.NumAckPending == 1
	})
}

// oneByteDeliveries leaves room for no pending delivery.
func oneByteDeliveries(c *Config) { c.Queue.DeliveriesMaxBytes = 1 }

const hourlyRetries = "    retry: {maxRetries: 3, interval: 1h}\n"

func TestFanout_WaitsWhilePendingDeliveriesAreOverTheirLimit(t *testing.T) {
	ep := newEndpoint(t, http.StatusInternalServerError)
	tr := startRelay(t, table(routeYAML("ns/a", ep.URL, `["*"]`, hourlyRetries)), allowLoopback, oneByteDeliveries)
	ctx := context.Background()
	holdEventForRoom(t, tr, ep)
	if info, err := tr.queue.deliveries.Info(ctx); err != nil || info.State.Msgs != 1 {
		t.Fatalf("deliveries stream holds %v messages (err %v), want only the waiting retry", info.State.Msgs, err)
	}

	if err := tr.queue.deliveries.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	got := ep.next(t, 10*time.Second)
	if typ := got.header.Get("X-Involveo-Event"); typ != "task.deleted" {
		t.Fatalf("delivered %q after the stream had room again, want task.deleted", typ)
	}
}

func TestShutdown_HandsBackEventsWaitingForRoom(t *testing.T) {
	ep := newEndpoint(t, http.StatusInternalServerError)
	dir, tbl := t.TempDir(), table(routeYAML("ns/a", ep.URL, `["*"]`, hourlyRetries))
	// A shutdown that waited for the held events would take the whole hour.
	tr := startRelayIn(t, dir, tbl, allowLoopback, oneByteDeliveries, func(c *Config) { c.ShutdownTimeout = time.Hour })
	holdEventForRoom(t, tr, ep)
	// More events than fan-out workers: every worker waits, and the pull
	// loop waits to hand over the next one.
	held := fanoutWorkers + 2
	for range held - 1 {
		tr.mustPost(t, seedEvent(t, "task.deleted"))
	}
	eventually(t, 10*time.Second, "events held by fan-out", func() bool {
		info, err := tr.queue.fanout.Info(context.Background())
		return err == nil && info.NumAckPending == held
	})
	tr.cancel()
	select {
	case <-tr.done:
		tr.cancel = nil
	case <-time.After(time.Minute):
		t.Fatal("relay still shutting down a minute later: fan-out kept waiting for room")
	}

	startRelayIn(t, dir, tbl, allowLoopback)
	for range held {
		if typ := ep.next(t, 10*time.Second).header.Get("X-Involveo-Event"); typ != "task.deleted" {
			t.Fatalf("delivered %q after the restart, want the handed-back task.deleted", typ)
		}
	}
}

// TestDelivery_AttemptLongerThanAckWaitIsNotHandedOutTwice: the relay reports
// progress on a running attempt, so JetStream does not take the delivery
// back while the endpoint is still answering.
func TestDelivery_AttemptLongerThanAckWaitIsNotHandedOutTwice(t *testing.T) {
	const ackWait = 2 * time.Second
	var requests atomic.Int32
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		select {
		case <-time.After(3 * ackWait):
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	tr := startRelay(t, table(routeYAML("ns/slow", slow.URL, `["*"]`, "    timeout: 1m\n")), allowLoopback,
		func(c *Config) { c.Queue.DeliverAckWait = ackWait })
	tr.mustPost(t, seedEvent(t, "task.created"))
	eventually(t, 30*time.Second, "the slow attempt succeeded", func() bool { return subHealth(t, tr.Relay, "ns/slow").Succeeded == 1 })
	// A redelivery would have started while the first attempt still ran.
	if n := requests.Load(); n != 1 {
		t.Fatalf("endpoint got %d requests for one delivery, want 1", n)
	}
}
