package kubectlplugin

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/involveo/webhook-operator/internal/health"
)

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 5, 4, 9, 30, 0, 0, time.UTC)
	tests := []struct {
		name    string
		value   string
		want    time.Time
		wantErr string
	}{{
		name:  "counts a duration back from now",
		value: "48h",
		want:  time.Date(2026, 5, 2, 9, 30, 0, 0, time.UTC),
	}, {
		name:  "takes a compound duration",
		value: "1h30m",
		want:  time.Date(2026, 5, 4, 8, 0, 0, 0, time.UTC),
	}, {
		name:  "takes an RFC 3339 time with an offset and returns it in UTC",
		value: "2026-05-01T20:00:00+02:00",
		want:  time.Date(2026, 5, 1, 18, 0, 0, 0, time.UTC),
	}, {
		name:  "keeps fractional seconds",
		value: "2026-05-01T18:00:00.25Z",
		want:  time.Date(2026, 5, 1, 18, 0, 0, 250_000_000, time.UTC),
	}, {
		name:    "refuses a time in the future",
		value:   "2026-05-04T09:31:00Z",
		wantErr: "--since 2026-05-04T09:31:00Z is in the future",
	}, {
		name:    "refuses days, which Go durations do not have",
		value:   "3d",
		wantErr: `--since "3d": want an RFC 3339 time (2026-05-01T18:00:00Z) or a positive duration (48h)`,
	}, {
		name:    "refuses a zero duration",
		value:   "0s",
		wantErr: `--since "0s": want an RFC 3339 time (2026-05-01T18:00:00Z) or a positive duration (48h)`,
	}, {
		name:    "refuses a date without a time",
		value:   "2026-05-01",
		wantErr: `--since "2026-05-01": want an RFC 3339 time (2026-05-01T18:00:00Z) or a positive duration (48h)`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := parseSince(tt.value, now)
			if tt.wantErr != "" {
				g.Expect(err).To(MatchError(tt.wantErr))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tt.want))
		})
	}
}

func TestCells(t *testing.T) {
	now := time.Date(2026, 5, 4, 9, 30, 0, 0, time.UTC)
	ago := func(d time.Duration) *metav1.Time { t := metav1.NewTime(now.Add(-d)); return &t }
	conditions := []metav1.Condition{
		{Type: "Ready", Status: metav1.ConditionTrue, Reason: "RouteLoaded"},
		{Type: "DeliveryHealthy", Status: metav1.ConditionFalse},
	}
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"shows a condition as status and reason", conditionCell(conditions, "Ready"), "True (RouteLoaded)"},
		{"shows a condition without a reason as its status", conditionCell(conditions, "DeliveryHealthy"), "False"},
		{"shows a missing condition as Unknown", conditionCell(conditions, "Stalled"), "Unknown"},
		{"shows an age in kubectl's format", age(now, ago(5*time.Minute+10*time.Second)), "5m10s"},
		{"shows an age of days in kubectl's format", age(now, ago(75*time.Hour)), "3d3h"},
		{"shows never for a time that is not set", age(now, nil), "never"},
		{"shows sub-10ms latencies to a tenth", latency(0.42), "0.4ms"},
		{"shows latencies under a second in whole milliseconds", latency(231.6), "232ms"},
		{"shows latencies of a second or more in seconds", latency(30000), "30.0s"},
		{"shows the status code of an attempt that got an answer", result(503, "503 Service Unavailable"), "503"},
		{"shows the reason of an attempt that got no answer", result(0, "timeout after 30s"), "timeout after 30s"},
		{"shows a dash when there is neither", result(0, ""), "-"},
		{"prints log times in UTC", timestamp(time.Date(2026, 5, 4, 11, 30, 0, 0, time.FixedZone("CEST", 7200))), "2026-05-04T09:30:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			NewWithT(t).Expect(tt.got).To(Equal(tt.want))
		})
	}
}

// TestListPages_StopsOnALoopingCursor uses a relay stand-in because a real
// relay never answers this way; the guard keeps a buggy one from hanging
// the command.
func TestListPages_StopsOnALoopingCursor(t *testing.T) {
	g := NewWithT(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"items":[{"seq":1}],"next":"1"}`)
	}))
	defer srv.Close()
	rc, err := newDirectRelay(srv.URL, srv.Client())
	g.Expect(err).NotTo(HaveOccurred())

	_, _, err = listPages[health.DeadLetter](context.Background(), rc, "/v1/subscriptions/a/b/deadletters", 0)

	g.Expect(err).To(MatchError(`relay paginates /v1/subscriptions/a/b/deadletters without progress (cursor "1")`))
}
