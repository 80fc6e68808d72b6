// Package health is the relay's delivery-health report, the contract between
// the relay (which serves it on GET /v1/subscriptions) and the manager (which
// turns it into each WebhookSubscription's status).
package health

import "time"

// Path is where the relay serves the report on its admin port.
const Path = "/v1/subscriptions"

// Report is one relay instance's view. Counters start at zero when the
// instance starts; a reader tells a restart from a reset by Instance and
// StartTime and keeps its own running totals.
type Report struct {
	// Instance is a random id chosen at process start.
	Instance string `json:"instance"`
	// StartTime is when this instance started.
	StartTime time.Time `json:"startTime"`
	// Loaded is true once a routing table has been loaded.
	Loaded bool `json:"loaded"`
	// Revision is the loaded routing table's revision.
	Revision string `json:"revision"`
	// Subscriptions has one entry per subscription in the loaded table,
	// sorted by id.
	Subscriptions []Subscription `json:"subscriptions"`
}

// Subscription is the delivery health of one subscription.
type Subscription struct {
	ID                  string     `json:"id"`
	Revision            string     `json:"revision"`
	Generation          int64      `json:"generation,omitempty"`
	LastAttemptTime     *time.Time `json:"lastAttemptTime,omitempty"`
	LastSuccessTime     *time.Time `json:"lastSuccessTime,omitempty"`
	LastFailureTime     *time.Time `json:"lastFailureTime,omitempty"`
	LastFailure         *Failure   `json:"lastFailure,omitempty"`
	ConsecutiveFailures int64      `json:"consecutiveFailures"`
	PendingRetries      int64      `json:"pendingRetries"`
	Succeeded           int64      `json:"succeeded"`
	Failed              int64      `json:"failed"`
	DeadLettered        int64      `json:"deadLettered"`
	// Cancelled counts deliveries dropped because the subscription left the
	// routing table while they were pending.
	Cancelled int64 `json:"cancelled"`
	// Filtered counts matching events the subscription's filter kept out;
	// FilterErrors counts those among them the filter could not evaluate.
	Filtered     int64 `json:"filtered"`
	FilterErrors int64 `json:"filterErrors"`
	// Paused is set while the relay holds the endpoint's deliveries because
	// it kept failing.
	Paused *Pause `json:"paused,omitempty"`
}

// Pause describes a paused endpoint.
type Pause struct {
	Since     time.Time `json:"since"`
	Reason    string    `json:"reason"`
	NextProbe time.Time `json:"nextProbe"`
}

// Failure describes the latest failed attempt. It never holds header values.
type Failure struct {
	Reason     string    `json:"reason"`
	StatusCode int       `json:"statusCode,omitempty"`
	Event      string    `json:"event"`
	Time       time.Time `json:"time"`
}
