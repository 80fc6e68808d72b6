package relay

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/involveo/webhook-operator/internal/health"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdmin_ServesHealthReadinessMetricsAndSubscriptions(t *testing.T) {
	ep := newEndpoint(t, http.StatusBadGateway)
	tr := startRelay(t, "revision: rev-7\nsubscriptions:\n"+routeYAML("team-a/crm", ep.URL, `["*"]`,
		"    generation: 4\n    retry: {maxRetries: 0, interval: 1s}\n"), allowLoopback)
	tr.mustPost(t, seedEvent(t, "task.created"))
	ep.next(t, 10*time.Second)
	eventually(t, 5*time.Second, "the failure counted", func() bool { return subHealth(t, tr.Relay, "team-a/crm").DeadLettered == 1 })

	if code, _ := get(t, tr.admin+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get(t, tr.admin+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d", code)
	}
	code, body := get(t, tr.admin+health.Path)
	var rep health.Report
	if err := json.Unmarshal([]byte(body), &rep); code != http.StatusOK || err != nil {
		t.Fatalf("%s = %d %v: %s", health.Path, code, err, body)
	}
	if rep.Instance == "" || rep.StartTime.IsZero() || !rep.Loaded || rep.Revision != "rev-7" || len(rep.Subscriptions) != 1 {
		t.Fatalf("report = %+v", rep)
	}
	s := rep.Subscriptions[0]
	if s.ID != "team-a/crm" || s.Generation != 4 || s.Revision != "rev-7" || s.Failed != 1 || s.DeadLettered != 1 ||
		s.LastFailure == nil || s.LastFailure.StatusCode != http.StatusBadGateway || s.LastAttemptTime == nil {
		t.Errorf("subscription health = %+v", s)
	}
	if strings.Contains(body, "key-team-a/crm") {
		t.Error("the health report contains the API key")
	}

	_, metrics := get(t, tr.admin+"/metrics")
	for _, want := range []string{
		`involveo_relay_ingest_total{result="202"} 1`,
		`involveo_relay_delivery_attempts_total{result="failure",subscription="team-a/crm"} 1`,
		`involveo_relay_dead_letters_total{subscription="team-a/crm"} 1`,
		`involveo_relay_routing_revision_info{revision="rev-7"} 1`,
		`involveo_relay_delivery_attempt_duration_seconds_count 1`,
		`involveo_relay_pending_retries 0`,
		`involveo_relay_stream_messages{stream="INVOLVEO_DEADLETTERS"} 1`,
		`involveo_relay_stream_limit_bytes{stream="INVOLVEO_EVENTS"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
