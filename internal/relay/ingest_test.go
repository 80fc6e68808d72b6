package relay

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"
)

// refusalCase is a request ingest must refuse, naming the field.
type refusalCase struct {
	name       string
	body       []byte
	header     map[string]string
	wantStatus int
	wantField  string
}

func TestIngest_RejectsBadRequestsNamingTheField(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(routeYAML("ns/s", ep.URL, `["*"]`, "")), allowLoopback,
		func(c *Config) { c.MaxBodyBytes = 4096 })
	valid := seedEvent(t, "task.created")
	tests := []refusalCase{
		{"rejects invalid JSON", []byte(`{"event":`), nil, 400, "body"},
		{"rejects a missing event type", []byte(`{"timestamp":"2025-07-28T13:15:40+00:00","data":{}}`), nil, 400, "event"},
		{"rejects a bad timestamp", []byte(`{"event":"x.y","timestamp":"yesterday","data":{}}`), nil, 400, "timestamp"},
		{"rejects tags that are not strings",
			bytes.Replace(valid, []byte(`"tags": [`), []byte(`"tags": [1, `), 1), nil, 400, "data.task.tags[0]"},
		{"rejects a body over the limit", append(append([]byte(`{"event":"x.y","timestamp":"2025-07-28T13:15:40Z","data":{"p":"`),
			bytes.Repeat([]byte("a"), 5000)...), []byte(`"}}`)...), nil, 413, "body"},
		{"rejects a non-JSON content type", valid, map[string]string{"Content-Type": "text/plain"}, 415, "Content-Type"},
		{"rejects an overlong idempotency key", valid, map[string]string{"Idempotency-Key": strings.Repeat("k", 300)}, 400, "Idempotency-Key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := tr.post(t, tt.body, tt.header)
			if res.Status != tt.wantStatus || res.Field != tt.wantField || res.Error == "" {
				t.Fatalf("answer = %d field %q error %q, want %d field %q", res.Status, res.Field, res.Error, tt.wantStatus, tt.wantField)
			}
		})
	}
	if n := len(ep.got); n != 0 {
		t.Fatalf("rejected events produced %d deliveries", n)
	}
}

func TestIngest_AcceptsUnknownEventTypes(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(routeYAML("ns/s", ep.URL, `["*"]`, "")), allowLoopback)
	body := []byte(`{"event":"comment.created","timestamp":"2025-07-28T13:15:40.507707+00:00Z","data":{"comment":{"text":"Привет"}}}`)
	res := tr.mustPost(t, body)
	if res.Deliveries != 1 {
		t.Fatalf("deliveries = %d, want 1", res.Deliveries)
	}
	if got := ep.next(t, 10*time.Second); !bytes.Equal(got.body, body) {
		t.Fatalf("body = %q", got.body)
	}
}

func TestIngest_RequiresTheBearerTokenWhenConfigured(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(routeYAML("ns/s", ep.URL, `["*"]`, "")), allowLoopback,
		func(c *Config) { c.IngestToken = []byte("s3cret-token") })
	body := seedEvent(t, "task.created")
	for _, auth := range []string{"", "Bearer wrong", "s3cret-token", "Bearer s3cret-token-and-more"} {
		if res := tr.post(t, body, map[string]string{"Authorization": auth}); res.Status != http.StatusUnauthorized {
			t.Errorf("Authorization %q: status %d, want 401", auth, res.Status)
		}
	}
	if res := tr.post(t, body, map[string]string{"Authorization": "Bearer s3cret-token"}); res.Status != http.StatusAccepted {
		t.Fatalf("right token: status %d, want 202", res.Status)
	}
	ep.next(t, 10*time.Second)
}

func TestIngest_IdempotencyKeyDeduplicates(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(routeYAML("ns/s", ep.URL, `["*"]`, "")), allowLoopback)
	body := seedEvent(t, "task.created")
	key := map[string]string{"Idempotency-Key": "evt-42"}
	first := tr.post(t, body, key)
	second := tr.post(t, body, key)
	if first.Status != http.StatusAccepted || second.Status != http.StatusAccepted || first.ID != second.ID {
		t.Fatalf("answers %+v and %+v, want 202 twice with the same id", first, second)
	}
	other := tr.mustPost(t, body)
	if other.ID == first.ID {
		t.Fatal("an event without the key got the keyed event's id")
	}
	seen := map[string]int{}
	for range 2 {
		got := ep.next(t, 10*time.Second)
		seen[got.header.Get("X-Involveo-Delivery")]++
	}
	eventually(t, 5*time.Second, "both successes counted", func() bool { return subHealth(t, tr.Relay, "ns/s").Succeeded == 2 })
	if len(ep.got) != 0 || len(seen) != 2 {
		t.Fatalf("deliveries by id = %v, %d more queued; want one per distinct event", seen, len(ep.got))
	}
}

func TestIngest_Answers503WhenTheStoreIsFull(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	body := seedEvent(t, "task.created")
	tr := startRelay(t, table(routeYAML("ns/s", ep.URL, `["*"]`, "")), allowLoopback,
		func(c *Config) { c.Queue.EventsMaxBytes = int64(3 * len(body)) })
	var last postResult
	for range 10 {
		if last = tr.post(t, body, nil); last.Status != http.StatusAccepted {
			break
		}
	}
	if last.Status != http.StatusServiceUnavailable || last.Header.Get("Retry-After") == "" {
		t.Fatalf("full store answered %d (Retry-After %q), want 503 with Retry-After", last.Status, last.Header.Get("Retry-After"))
	}
}
