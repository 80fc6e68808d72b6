package relay

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/involveo/webhook-operator/internal/event"
)

// FuzzIngest drives POST /v1/events of a real relay (embedded JetStream, no
// subscriptions) with arbitrary bodies: it must never panic, must accept
// exactly what the event package accepts, and must reject everything else
// with a 400 that names a field.
func FuzzIngest(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("..", "event", "testdata", "*.json"))
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{"event":"task.created","timestamp":"2025-07-28T13:15:40.507707+00:00Z","data":{}}`,
		`{"event":"comment.added","timestamp":"2025-07-28T13:15:40Z","data":{"x":[1,2]}}`,
		`[]`, `null`, `{"event":1}`, "{\"event\":\"a\xff\"}",
	} {
		f.Add([]byte(s))
	}
	tr := startRelay(f, "subscriptions: []\n", func(c *Config) { c.Queue.EventsMaxBytes = 1 << 30 })
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/v1/events", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		tr.handleIngest(rec, req)
		_, parseErr := event.Parse(body)
		switch {
		case parseErr == nil && len(body) <= DefaultMaxBodyBytes:
			if rec.Code != http.StatusAccepted {
				t.Fatalf("valid event answered %d: %s", rec.Code, rec.Body)
			}
		case rec.Code == http.StatusRequestEntityTooLarge:
		default:
			var res errorResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
				t.Fatalf("answer is not JSON: %v", err)
			}
			if rec.Code != http.StatusBadRequest || res.Field == "" || res.Error == "" {
				t.Fatalf("invalid event answered %d %+v, want 400 naming a field", rec.Code, res)
			}
		}
	})
}
