package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"

	"github.com/involveo/webhook-operator/internal/routing"
)

// seedEvent reads one of the seed document's examples.
func seedEvent(t testing.TB, eventType string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "event", "testdata", eventType+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// received is one request a test endpoint got.
type received struct {
	header http.Header
	body   []byte
	at     time.Time
}

// endpoint is a real HTTP server on 127.0.0.1 that answers with status() and
// records every request.
type endpoint struct {
	*httptest.Server
	got    chan received
	mu     sync.Mutex
	status int
}

func newEndpoint(t testing.TB, status int) *endpoint {
	e := &endpoint{got: make(chan received, 1000), status: status}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		e.got <- received{header: r.Header.Clone(), body: body, at: time.Now()}
		e.mu.Lock()
		status := e.status
		e.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(e.Close)
	return e
}

// newHangingEndpoint answers nothing until release is closed or the client
// gives up.
func newHangingEndpoint(t testing.TB) (e *endpoint, release chan struct{}) {
	release = make(chan struct{})
	e = &endpoint{got: make(chan received, 1000), status: http.StatusOK}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(e.Close)
	return e, release
}

func (e *endpoint) setStatus(s int) {
	e.mu.Lock()
	e.status = s
	e.mu.Unlock()
}

// next waits for the next request.
func (e *endpoint) next(t testing.TB, within time.Duration) received {
	t.Helper()
	select {
	case r := <-e.got:
		return r
	case <-time.After(within):
		t.Fatalf("no delivery to %s within %s", e.URL, within)
		return received{}
	}
}

// testRelay is a relay running in-process on an embedded JetStream.
type testRelay struct {
	*Relay
	ingest string
	admin  string
	cancel context.CancelFunc
	done   chan error
}

type relayOption func(*Config)

func allowLoopback(c *Config) {
	c.AllowDestinationCIDRs = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
}

func startRelay(t testing.TB, table string, opts ...relayOption) *testRelay {
	t.Helper()
	return startRelayIn(t, t.TempDir(), table, opts...)
}

func startRelayIn(t testing.TB, dataDir, table string, opts ...relayOption) *testRelay {
	t.Helper()
	cfg := Config{
		Listen:                     "127.0.0.1:0",
		AdminListen:                "127.0.0.1:0",
		MaxBodyBytes:               DefaultMaxBodyBytes,
		Workers:                    16,
		MaxInFlightPerSubscription: 4,
		ShutdownTimeout:            5 * time.Second,
		Log:                        logger(t),
		Queue: QueueConfig{
			DataDir:             dataDir,
			EventsMaxBytes:      64 << 20,
			EventsMaxAge:        time.Hour,
			IdempotencyWindow:   time.Hour,
			DeliveriesMaxBytes:  64 << 20,
			DeadLettersMaxBytes: 64 << 20,
			DeadLettersMaxAge:   time.Hour,
			DeliverAckWait:      30 * time.Second,
			MaxAckPending:       1000,
			AttemptLogSize:      100,
		},
	}
	for _, o := range opts {
		o(&cfg)
	}
	r := New(cfg)
	r.SetRoutes(compile(t, table))
	ctx, cancel := context.WithCancel(context.Background())
	tr := &testRelay{Relay: r, cancel: cancel, done: make(chan error, 1)}
	go func() { tr.done <- r.Run(ctx) }()
	select {
	case a := <-r.AdminAddr():
		tr.admin = "http://" + a.String()
	case err := <-tr.done:
		t.Fatalf("relay stopped: %v", err)
	}
	select {
	case a := <-r.IngestAddr():
		tr.ingest = "http://" + a.String()
	case err := <-tr.done:
		t.Fatalf("relay stopped: %v", err)
	}
	t.Cleanup(tr.stop)
	return tr
}

func (tr *testRelay) stop() {
	if tr.cancel == nil {
		return
	}
	tr.cancel()
	tr.cancel = nil
	<-tr.done
}

// logger logs through the test under -v; a fuzz target's *testing.F has no
// testr logger.
func logger(t testing.TB) logr.Logger {
	if tt, ok := t.(*testing.T); ok && testing.Verbose() {
		return testr.New(tt)
	}
	return logr.Discard()
}

func compile(t testing.TB, table string) *routing.Routes {
	t.Helper()
	tbl, err := routing.Parse([]byte(table))
	if err != nil {
		t.Fatalf("parse routing table: %v", err)
	}
	routes, err := routing.Compile(tbl, nil)
	if err != nil {
		t.Fatalf("compile routing table: %v", err)
	}
	return routes
}

type postResult struct {
	Status     int
	ID         string `json:"id"`
	Deliveries int    `json:"deliveries"`
	Error      string `json:"error"`
	Field      string `json:"field"`
	Header     http.Header
}

func (tr *testRelay) post(t testing.TB, body []byte, header map[string]string) postResult {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, tr.ingest+"/v1/events", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("post event: %v", err)
	}
	defer resp.Body.Close()
	res := postResult{Status: resp.StatusCode, Header: resp.Header}
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		t.Fatalf("decode ingest answer (%d): %v", resp.StatusCode, err)
	}
	return res
}

func (tr *testRelay) mustPost(t testing.TB, body []byte) postResult {
	t.Helper()
	res := tr.post(t, body, nil)
	if res.Status != http.StatusAccepted {
		t.Fatalf("ingest answered %d: %s (%s)", res.Status, res.Error, res.Field)
	}
	return res
}

// eventually polls cond until it holds or the wait runs out.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func routeYAML(id, url, events string, extra string) string {
	return fmt.Sprintf("  - id: %s\n    url: %s\n    events: %s\n    apiKey: {value: key-%s}\n%s", id, url, events, id, extra)
}

func table(routes ...string) string {
	out := "subscriptions:\n"
	for _, r := range routes {
		out += r
	}
	return out
}
