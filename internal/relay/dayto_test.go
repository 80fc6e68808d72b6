package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/involveo/webhook-operator/internal/health"
)

func adminJSON(t *testing.T, method, url string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("%s %s: decode: %v", method, url, err)
		}
	}
	return resp.StatusCode
}

func (tr *testRelay) subURL(pattern string) string {
	return tr.admin + health.SubscriptionPath(pattern, "ns", "crm")
}

func TestDeadLetters_ListedThenRedeliveredExactlyOnce(t *testing.T) {
	ep := newEndpoint(t, http.StatusServiceUnavailable)
	tr := startRelay(t, table(routeYAML("ns/crm", ep.URL, `["*"]`, "    retry: {maxRetries: 0, interval: 1s}\n")), allowLoopback)
	const n = 3
	for range n {
		tr.mustPost(t, seedEvent(t, "task.created"))
	}
	eventually(t, 10*time.Second, "three dead letters", func() bool { return subHealth(t, tr.Relay, "ns/crm").DeadLettered == n })
	for range n {
		ep.next(t, time.Second)
	}

	var page health.Page[health.DeadLetter]
	if code := adminJSON(t, "GET", tr.subURL(health.DeadLettersPath)+"?limit=2", &page); code != 200 {
		t.Fatalf("deadletters answered %d", code)
	}
	if len(page.Items) != 2 || page.Next == "" || page.Items[0].Reason == "" || page.Items[0].StatusCode != 503 || page.Items[0].Event != "task.created" {
		t.Fatalf("first page = %+v", page)
	}
	var rest health.Page[health.DeadLetter]
	adminJSON(t, "GET", tr.subURL(health.DeadLettersPath)+"?limit=2&after="+page.Next, &rest)
	if len(rest.Items) != 1 || rest.Next != "" || rest.Items[0].Seq <= page.Items[1].Seq {
		t.Fatalf("second page = %+v", rest)
	}

	ep.setStatus(http.StatusOK)
	var res health.RedeliverResult
	// until bounds a retried request to dead letters from before its first try.
	before := page.Items[0].Time.Add(-time.Second).Format(time.RFC3339Nano)
	if adminJSON(t, "POST", tr.subURL(health.RedeliverPath)+"?until="+before, &res); res.Replayed != 0 {
		t.Fatalf("redeliver until %s replayed %d", before, res.Replayed)
	}
	if code := adminJSON(t, "POST", tr.subURL(health.RedeliverPath), &res); code != 200 || res.Replayed != n {
		t.Fatalf("redeliver answered %d %+v, want %d replayed", code, res, n)
	}
	ids := map[string]bool{}
	for range n {
		ids[ep.next(t, 10*time.Second).header.Get("X-Involveo-Delivery")] = true
	}
	if len(ids) != n {
		t.Fatalf("replay delivered %d distinct deliveries, want %d", len(ids), n)
	}
	if adminJSON(t, "POST", tr.subURL(health.RedeliverPath), &res); res.Replayed != 0 {
		t.Fatalf("a second redeliver replayed %d", res.Replayed)
	}
	adminJSON(t, "GET", tr.subURL(health.DeadLettersPath), &page)
	if len(page.Items) != 0 {
		t.Fatalf("replayed dead letters still listed: %+v", page.Items)
	}
	eventually(t, 5*time.Second, "successes counted", func() bool { return subHealth(t, tr.Relay, "ns/crm").Succeeded == n })
	if len(ep.got) != 0 {
		t.Fatalf("%d extra deliveries", len(ep.got))
	}
}

func TestAttempts_LogNewestFirstWithoutSecrets(t *testing.T) {
	ep := newEndpoint(t, http.StatusInternalServerError)
	tr := startRelay(t, table(routeYAML("ns/crm", ep.URL, `["*"]`, "    retry: {maxRetries: 1, interval: 1s}\n")), allowLoopback)
	tr.mustPost(t, seedEvent(t, "task.created"))
	ep.next(t, 10*time.Second)
	ep.setStatus(http.StatusOK)
	ep.next(t, 10*time.Second)

	var page health.Page[health.Attempt]
	eventually(t, 5*time.Second, "two attempts logged", func() bool {
		adminJSON(t, "GET", tr.subURL(health.AttemptsPath), &page)
		return len(page.Items) == 2
	})
	newest, oldest := page.Items[0], page.Items[1]
	if !newest.OK || newest.Attempt != 2 || oldest.OK || oldest.Attempt != 1 || oldest.StatusCode != 500 || newest.DeliveryID != oldest.DeliveryID {
		t.Fatalf("log = %+v", page.Items)
	}
	var first health.Page[health.Attempt]
	adminJSON(t, "GET", tr.subURL(health.AttemptsPath)+"?limit=1", &first)
	if len(first.Items) != 1 || first.Items[0].Attempt != 2 || first.Next == "" {
		t.Fatalf("page of one = %+v", first)
	}
	raw := new(bytes.Buffer)
	resp, err := http.Get(tr.subURL(health.AttemptsPath))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = raw.ReadFrom(resp.Body)
	resp.Body.Close()
	if strings.Contains(raw.String(), "key-ns/crm") || strings.Contains(raw.String(), "Почему") {
		t.Fatal("the delivery log holds a secret or a body")
	}
	if code := adminJSON(t, "GET", tr.admin+health.SubscriptionPath(health.AttemptsPath, "ns", "nope"), nil); code != 404 {
		t.Fatalf("unknown subscription answered %d", code)
	}
}

func TestAttempts_BatchedLogPagesThroughEveryAttemptOnce(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(routeYAML("ns/crm", ep.URL, `["*"]`, "")), allowLoopback)
	const n = 40
	for range n {
		tr.mustPost(t, seedEvent(t, "task.created"))
	}
	for range n {
		ep.next(t, 10*time.Second)
	}
	var all health.Page[health.Attempt]
	eventually(t, 5*time.Second, "every attempt logged", func() bool {
		adminJSON(t, "GET", tr.subURL(health.AttemptsPath)+"?limit=500", &all)
		return len(all.Items) == n
	})
	// Attempts that finish together share a log message; pages must still
	// cut between them and never repeat or skip one.
	info, err := tr.queue.js.Stream(context.Background(), attemptsStream)
	if err != nil {
		t.Fatal(err)
	}
	if msgs := info.CachedInfo().State.Msgs; msgs >= n {
		t.Fatalf("%d log messages for %d attempts: nothing was batched", msgs, n)
	}
	seen := map[string]bool{}
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > n {
			t.Fatal("paging does not end")
		}
		var page health.Page[health.Attempt]
		adminJSON(t, "GET", tr.subURL(health.AttemptsPath)+"?limit=7&after="+cursor, &page)
		for _, a := range page.Items {
			if seen[a.DeliveryID] {
				t.Fatalf("delivery %s listed twice", a.DeliveryID)
			}
			seen[a.DeliveryID] = true
		}
		if page.Next == "" {
			break
		}
		cursor = page.Next
	}
	if len(seen) != n {
		t.Fatalf("paging listed %d attempts, want %d", len(seen), n)
	}
	for i := 1; i < len(all.Items); i++ {
		if all.Items[i].Time.After(all.Items[i-1].Time) {
			t.Fatalf("attempt %d is newer than the one listed before it", i)
		}
	}
}

func TestBreaker_PausesHoldsAndResumesWithoutLoss(t *testing.T) {
	ep := newEndpoint(t, http.StatusInternalServerError)
	tr := startRelay(t, table(routeYAML("ns/crm", ep.URL, `["*"]`, "    retry: {maxRetries: 0, interval: 1s}\n")), allowLoopback,
		func(c *Config) { c.Breaker = BreakerConfig{AfterDeadLetters: 2, ProbeEvery: 2 * time.Second} })
	for range 2 {
		tr.mustPost(t, seedEvent(t, "task.created"))
	}
	eventually(t, 10*time.Second, "the endpoint paused", func() bool { return subHealth(t, tr.Relay, "ns/crm").Paused != nil })
	pause := subHealth(t, tr.Relay, "ns/crm").Paused
	if !strings.Contains(pause.Reason, "2 deliveries in a row") {
		t.Errorf("pause reason = %q", pause.Reason)
	}
	for range 2 {
		ep.next(t, time.Second)
	}

	// Held while paused: new events are not attempted before the probe.
	ep.setStatus(http.StatusOK)
	const held = 3
	for range held {
		tr.mustPost(t, seedEvent(t, "task.published"))
	}
	probe := ep.next(t, 10*time.Second)
	if probe.at.Before(pause.NextProbe.Add(-50 * time.Millisecond)) {
		t.Fatalf("a held delivery was attempted at %s, before the probe time %s", probe.at, pause.NextProbe)
	}
	for range held - 1 {
		ep.next(t, 10*time.Second)
	}
	eventually(t, 5*time.Second, "the endpoint resumed", func() bool {
		h := subHealth(t, tr.Relay, "ns/crm")
		return h.Paused == nil && h.Succeeded == held
	})
}

func TestTestEvent_IsDeliveredNowAndMarked(t *testing.T) {
	ep := newEndpoint(t, http.StatusOK)
	tr := startRelay(t, table(routeYAML("ns/crm", ep.URL, `["task.deleted"]`, "    filter: 'false'\n")), allowLoopback)
	var res ingestResponse
	if code := adminJSON(t, "POST", tr.subURL(health.TestPath), &res); code != http.StatusAccepted || res.ID == "" {
		t.Fatalf("test answered %d %+v", code, res)
	}
	got := ep.next(t, 10*time.Second)
	var body struct {
		Event string `json:"event"`
		Test  bool   `json:"test"`
	}
	if err := json.Unmarshal(got.body, &body); err != nil || body.Event != "task.created" || !body.Test {
		t.Fatalf("test body = %s", got.body)
	}
	if got.header.Get("X-Api-Key") != "key-ns/crm" {
		t.Error("the test delivery lacks the subscription's key")
	}
}

func TestDeadLetters_ARedeliveredDeadLetterThatFailsAgainIsDeadLetteredAgain(t *testing.T) {
	ep := newEndpoint(t, http.StatusServiceUnavailable)
	tr := startRelay(t, table(routeYAML("ns/crm", ep.URL, `["*"]`, "    retry: {maxRetries: 1, interval: 1s}\n")), allowLoopback)
	tr.mustPost(t, seedEvent(t, "task.created"))
	ep.next(t, 10*time.Second)
	ep.next(t, 10*time.Second)
	eventually(t, 10*time.Second, "the first dead letter", func() bool { return subHealth(t, tr.Relay, "ns/crm").DeadLettered == 1 })

	// The replay's attempts reuse the delivery id; their follow-ups must not
	// be taken for duplicates of the first run's, still in JetStream's window.
	var res health.RedeliverResult
	adminJSON(t, "POST", tr.subURL(health.RedeliverPath), &res)
	if res.Replayed != 1 {
		t.Fatalf("replayed %d", res.Replayed)
	}
	ep.next(t, 10*time.Second)
	ep.next(t, 10*time.Second)
	eventually(t, 10*time.Second, "the second dead letter", func() bool { return subHealth(t, tr.Relay, "ns/crm").DeadLettered == 2 })
	var page health.Page[health.DeadLetter]
	adminJSON(t, "GET", tr.subURL(health.DeadLettersPath), &page)
	if len(page.Items) != 1 || page.Items[0].Attempts != 2 {
		t.Fatalf("dead letters after the failed replay = %+v, want the delivery back with its attempts", page.Items)
	}
}
