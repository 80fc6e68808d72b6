package health

import (
	"strings"
	"time"
)

// Paths of the per-subscription admin endpoints, under Path. A subscription
// id is "namespace/name", so it spans two path segments.
const (
	// AttemptsPath lists the latest delivery attempts, newest first.
	AttemptsPath = "/v1/subscriptions/{namespace}/{name}/attempts"
	// DeadLettersPath lists dead letters, oldest first.
	DeadLettersPath = "/v1/subscriptions/{namespace}/{name}/deadletters"
	// RedeliverPath (POST) re-enqueues dead letters with a fresh retry budget
	// and resumes a paused endpoint. Query: since and until (RFC 3339,
	// optional) bound the dead letters' times.
	RedeliverPath = "/v1/subscriptions/{namespace}/{name}/redeliver"
	// TestPath (POST) delivers a test task.created, marked as a test, now.
	TestPath = "/v1/subscriptions/{namespace}/{name}/test"
)

// SubscriptionPath fills a per-subscription path pattern.
func SubscriptionPath(pattern, namespace, name string) string {
	return strings.NewReplacer("{namespace}", namespace, "{name}", name).Replace(pattern)
}

// Attempt is one delivery attempt in the delivery log. It holds no body and
// no header values.
type Attempt struct {
	Time       time.Time `json:"time"`
	DeliveryID string    `json:"deliveryId"`
	Event      string    `json:"event"`
	Attempt    int       `json:"attempt"`
	OK         bool      `json:"ok"`
	StatusCode int       `json:"statusCode,omitempty"`
	Reason     string    `json:"reason"`
	LatencyMs  float64   `json:"latencyMs"`
}

// DeadLetter is one delivery given up after its last attempt.
type DeadLetter struct {
	// Seq orders dead letters and is the pagination cursor.
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	DeliveryID string    `json:"deliveryId"`
	EventID    string    `json:"eventId"`
	Event      string    `json:"event"`
	Attempts   int       `json:"attempts"`
	StatusCode int       `json:"statusCode,omitempty"`
	Reason     string    `json:"reason"`
}

// Page is one page of a listing; Next is the cursor of the following page
// (query parameter "after"), empty on the last page.
type Page[T any] struct {
	Items []T    `json:"items"`
	Next  string `json:"next,omitempty"`
}

// RedeliverResult answers RedeliverPath.
type RedeliverResult struct {
	// Replayed is the number of dead letters re-enqueued.
	Replayed int `json:"replayed"`
}
