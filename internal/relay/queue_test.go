package relay

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startNATS runs a separate JetStream server listening on 127.0.0.1, as an
// external cluster would.
func startNATS(t *testing.T) *server.Server {
	t.Helper()
	srv, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("external NATS not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return srv
}

func TestQueue_ExternalJetStreamSharesWorkBetweenRelays(t *testing.T) {
	nats := startNATS(t)
	ep := newEndpoint(t, http.StatusOK)
	routes := table(routeYAML("ns/s", ep.URL, `["*"]`, ""))
	external := func(c *Config) { c.Queue.NATSURL = nats.ClientURL(); c.Queue.DataDir = "" }
	a := startRelay(t, routes, allowLoopback, external)
	b := startRelay(t, routes, allowLoopback, external)

	const n = 20
	for i := range n {
		(map[bool]*testRelay{true: a, false: b})[i%2 == 0].mustPost(t, seedEvent(t, "task.created"))
	}
	ids := map[string]bool{}
	for range n {
		ids[ep.next(t, 10*time.Second).header.Get("X-Involveo-Delivery")] = true
	}
	if len(ids) != n {
		t.Fatalf("%d distinct deliveries, want %d", len(ids), n)
	}
	eventually(t, 5*time.Second, "all successes counted", func() bool {
		return subHealth(t, a.Relay, "ns/s").Succeeded+subHealth(t, b.Relay, "ns/s").Succeeded == n
	})
	if len(ep.got) != 0 {
		t.Fatalf("%d duplicate deliveries", len(ep.got))
	}
}

func TestRelay_ShutdownFinishesRunningAttempts(t *testing.T) {
	entered, release := make(chan struct{}, 1), make(chan struct{})
	ep := newEndpoint(t, http.StatusOK)
	ep.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
	})
	tr := startRelay(t, table(routeYAML("ns/s", ep.URL, `["*"]`, "")), allowLoopback)
	tr.mustPost(t, seedEvent(t, "task.created"))
	<-entered

	stopped := make(chan struct{})
	go func() { tr.stop(); close(stopped) }()
	// Ingest closes first, while the attempt is still running.
	eventually(t, 5*time.Second, "ingest to close", func() bool {
		_, err := http.Post(tr.ingest+"/v1/events", "application/json", nil)
		return err != nil
	})
	select {
	case <-stopped:
		t.Fatal("relay stopped before its running attempt finished")
	default:
	}
	close(release)
	<-stopped
	if h := subHealth(t, tr.Relay, "ns/s"); h.Succeeded != 1 {
		t.Fatalf("health after shutdown = %+v, want the running attempt counted as a success", h)
	}
}

func TestRelay_StopsWhenItsConsumerIsDeleted(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(routeYAML("ns/a", ep.URL, `["*"]`, "")), allowLoopback)
	if err := tr.queue.js.DeleteConsumer(context.Background(), deliveriesStream, deliverConsumer); err != nil {
		t.Fatal(err)
	}
	// A relay that kept running would take events it can never deliver; one
	// that stops is restarted and declares its consumers again.
	select {
	case err := <-tr.done:
		if err == nil || !strings.Contains(err.Error(), deliverConsumer) {
			t.Fatalf("relay stopped with %v, want an error naming the %s consumer", err, deliverConsumer)
		}
		tr.done <- err
	case <-time.After(15 * time.Second):
		t.Fatal("relay still running 15 s after its deliver consumer was deleted")
	}
}
