package relay

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestFilter_DeliversOnlyEventsItAccepts(t *testing.T) {
	admin, done, broken := newEndpoint(t, 200), newEndpoint(t, 200), newEndpoint(t, 200)
	tr := startRelay(t, table(
		routeYAML("ns/admin", admin.URL, `["*"]`, "    filter: 'data.task.tags.exists(t, t == \"admin\")'\n"),
		routeYAML("ns/done", done.URL, `["*"]`, "    filter: 'event == \"task.status_changed\" && data.status_after == \"Готово\"'\n"),
		// Reads a field task events lack: an evaluation error, not a delivery.
		routeYAML("ns/broken", broken.URL, `["*"]`, "    filter: 'data.comment.text == \"x\"'\n"),
	), allowLoopback)

	changed := tr.mustPost(t, seedEvent(t, "task.status_changed")) // tags: admin, почва
	if changed.Deliveries != 3 {
		t.Fatalf("deliveries at ingest = %d, want the 3 type matches", changed.Deliveries)
	}
	admin.next(t, 10*time.Second)
	done.next(t, 10*time.Second)
	tr.mustPost(t, seedEvent(t, "task.published"))
	eventually(t, 5*time.Second, "both events filtered", func() bool {
		return subHealth(t, tr.Relay, "ns/broken").Filtered == 2 && subHealth(t, tr.Relay, "ns/done").Filtered == 1
	})
	if h := subHealth(t, tr.Relay, "ns/broken"); h.FilterErrors != 2 {
		t.Errorf("ns/broken filter errors = %d, want 2", h.FilterErrors)
	}
	if n := len(broken.got) + len(done.got); n != 0 {
		t.Errorf("%d deliveries that the filters refused", n)
	}
	if got := subHealth(t, tr.Relay, "ns/admin"); got.Filtered != 0 {
		// task.published's seed example carries the admin tag too.
		t.Errorf("ns/admin filtered %d events", got.Filtered)
	}
}

// verifyStandardWebhooks is written from the Standard Webhooks spec, not
// with the signing package, so it checks the relay independently.
func verifyStandardWebhooks(secret string, h http.Header, body []byte) (matched int) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return 0
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(h.Get("webhook-id") + "." + h.Get("webhook-timestamp") + "."))
	mac.Write(body)
	want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	for _, sig := range strings.Fields(h.Get("webhook-signature")) {
		if hmac.Equal([]byte(sig), []byte(want)) {
			matched++
		}
	}
	return matched
}

func TestSigning_SignsWithBothSecretsDuringARotation(t *testing.T) {
	const current, previous = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2Vjb25kLXNlY3JldC1vZi0yNC1ieXRlcyE="
	ep := newEndpoint(t, 200)
	tr := startRelay(t, table(routeYAML("ns/signed", ep.URL, `["*"]`,
		"    signing:\n      secret: {value: "+current+"}\n      previous: {value: "+previous+"}\n")), allowLoopback)
	body := seedEvent(t, "task.created")
	tr.mustPost(t, body)
	got := ep.next(t, 10*time.Second)

	if got.header.Get("webhook-id") != got.header.Get("X-Involveo-Delivery") {
		t.Errorf("webhook-id %q is not the delivery id %q", got.header.Get("webhook-id"), got.header.Get("X-Involveo-Delivery"))
	}
	ts := got.header.Get("webhook-timestamp")
	if age := time.Since(time.Unix(mustAtoi(t, ts), 0)); age < -time.Minute || age > time.Minute {
		t.Errorf("webhook-timestamp %q is not the attempt time", ts)
	}
	if n := len(strings.Fields(got.header.Get("webhook-signature"))); n != 2 {
		t.Fatalf("%d signatures, want one per secret", n)
	}
	for _, s := range []string{current, previous} {
		if verifyStandardWebhooks(s, got.header, got.body) != 1 {
			t.Errorf("no signature verifies with %s…", s[:10])
		}
	}
}

func mustAtoi(t *testing.T, s string) int64 {
	t.Helper()
	var n int64
	for _, c := range s {
		if c < '0' || c > '9' {
			t.Fatalf("%q is not a number", s)
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

func TestRateLimit_HoldsWithinTenPercentOverTenSeconds(t *testing.T) {
	if testing.Short() {
		t.Skip("measures for ten seconds")
	}
	const rate, window = 20, 10 * time.Second
	ep := newEndpoint(t, 200)
	tr := startRelay(t, table(routeYAML("ns/limited", ep.URL, `["*"]`,
		"    ratePerSecond: 20\n    maxInFlight: 8\n")), allowLoopback)
	body := seedEvent(t, "task.created")
	for range 2 * rate * int(window/time.Second) {
		tr.mustPost(t, body)
	}
	first := ep.next(t, 10*time.Second)
	count := 1
	deadline := time.After(time.Until(first.at.Add(window)))
	for done := false; !done; {
		select {
		case <-ep.got:
			count++
		case <-deadline:
			done = true
		}
	}
	want := rate * int(window/time.Second)
	if count < want*9/10 || count > want*11/10 {
		t.Fatalf("%d deliveries in %s, want %d ± 10%%", count, window, want)
	}
}

func TestRetry_HonoursRetryAfterWithoutAnExtraAttempt(t *testing.T) {
	ep := newEndpoint(t, http.StatusTooManyRequests)
	ep.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ep.got <- received{header: r.Header.Clone(), at: time.Now()}
		w.Header().Set("Retry-After", "3")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	tr := startRelay(t, table(routeYAML("ns/busy", ep.URL, `["*"]`, "    retry: {maxRetries: 1, interval: 1s}\n")), allowLoopback)
	tr.mustPost(t, seedEvent(t, "task.created"))
	first, second := ep.next(t, 10*time.Second), ep.next(t, 10*time.Second)
	if gap := second.at.Sub(first.at); gap < 3*time.Second {
		t.Errorf("retry came %s after a Retry-After of 3s", gap)
	}
	eventually(t, 5*time.Second, "dead letter", func() bool { return subHealth(t, tr.Relay, "ns/busy").DeadLettered == 1 })
	if h := subHealth(t, tr.Relay, "ns/busy"); h.Failed != 2 || len(ep.got) != 0 {
		t.Errorf("failed = %d, %d more attempts; want exactly 1 + maxRetries attempts", h.Failed, len(ep.got))
	}
}

func TestRetry_410GoneStopsAtOnce(t *testing.T) {
	ep := newEndpoint(t, http.StatusGone)
	tr := startRelay(t, table(routeYAML("ns/gone", ep.URL, `["*"]`, "    retry: {maxRetries: 3, interval: 1s}\n")), allowLoopback)
	tr.mustPost(t, seedEvent(t, "task.created"))
	ep.next(t, 10*time.Second)
	eventually(t, 5*time.Second, "dead letter", func() bool { return subHealth(t, tr.Relay, "ns/gone").DeadLettered == 1 })
	h := subHealth(t, tr.Relay, "ns/gone")
	if h.Failed != 1 || h.LastFailure == nil || !strings.HasPrefix(h.LastFailure.Reason, "Gone") {
		t.Fatalf("health = %+v, want one attempt dead-lettered as Gone", h)
	}
	if h.PendingRetries != 0 || len(ep.got) != 0 {
		t.Fatalf("a 410 was retried")
	}
}
