package relay

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/involveo/webhook-operator/internal/event"
)

const (
	// DefaultMaxBodyBytes is the ingest size limit: the largest Involveo event
	// is a few kilobytes of idea text, so 1 MiB leaves room without letting a
	// client fill the store with one request.
	DefaultMaxBodyBytes = 1 << 20
	// maxIdempotencyKeyLen bounds the key stored in JetStream's duplicate table.
	maxIdempotencyKeyLen = 256
	// storeTimeout bounds the wait for JetStream to acknowledge a write before
	// the producer is told to retry (503).
	storeTimeout = 5 * time.Second
	// retryAfterSeconds is what a 503 asks the producer to wait.
	retryAfterSeconds = 5
)

// Headers the relay stores with events and deliveries.
const (
	hdrEventID      = "Involveo-Event-Id"
	hdrEventType    = "Involveo-Event"
	hdrReceivedAt   = "Involveo-Received-At"
	hdrTimestamp    = "Involveo-Timestamp"
	hdrSubscription = "Involveo-Subscription"
	hdrDeliveryID   = "Involveo-Delivery"
	hdrAttempt      = "Involveo-Attempt"
	hdrNotBefore    = "Involveo-Not-Before"
	hdrLastError    = "Involveo-Last-Error"
	hdrLastStatus   = "Involveo-Last-Status"
	// hdrPostponed counts how often a delivery found no room to run.
	hdrPostponed = "Involveo-Postponed"
	// hdrReplay marks a redelivered dead letter (its dead-letter sequence):
	// its attempts start over, so their message ids must differ from the
	// first run's, which may still be in JetStream's duplicate window.
	hdrReplay = "Involveo-Replay"
)

type ingestResponse struct {
	ID         string `json:"id"`
	Deliveries int    `json:"deliveries"`
}

type errorResponse struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

// handleIngest serves POST /v1/events.
func (r *Relay) handleIngest(w http.ResponseWriter, req *http.Request) {
	status, body := r.ingest(req)
	r.metrics.ingest.WithLabelValues(strconv.Itoa(status)).Inc()
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	}
	writeJSON(w, status, body)
}

func (r *Relay) ingest(req *http.Request) (int, any) {
	key, status, refusal := r.checkRequest(req, "application/json")
	if refusal != nil {
		return status, *refusal
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, req.Body, r.cfg.MaxBodyBytes))
	if err != nil {
		return bodyError(err, r.cfg.MaxBodyBytes)
	}
	env, refusal := parseEvent(body)
	if refusal != nil {
		return http.StatusBadRequest, *refusal
	}
	id, err := r.store(req.Context(), env, key)
	if err != nil {
		r.log.Error(err, "store event", "event", env.Type)
		return http.StatusServiceUnavailable, errorResponse{Error: "the event store cannot accept events right now; retry later"}
	}
	return http.StatusAccepted, ingestResponse{ID: id, Deliveries: len(r.routes.Load().Match(env.Type))}
}

// checkRequest applies what every ingest request must pass: POST, the
// bearer token, the content type and the idempotency key's length. It
// returns the key, or the status and answer of a refusal.
func (r *Relay) checkRequest(req *http.Request, mediaType string) (string, int, *errorResponse) {
	if req.Method != http.MethodPost {
		return "", http.StatusMethodNotAllowed, &errorResponse{Error: "use POST"}
	}
	if !r.authorized(req) {
		return "", http.StatusUnauthorized, &errorResponse{Error: "missing or wrong bearer token", Field: "Authorization"}
	}
	if mt, _, err := mime.ParseMediaType(req.Header.Get("Content-Type")); err != nil || mt != mediaType {
		return "", http.StatusUnsupportedMediaType, &errorResponse{Error: "Content-Type must be " + mediaType, Field: "Content-Type"}
	}
	key := req.Header.Get("Idempotency-Key")
	if len(key) > maxIdempotencyKeyLen {
		return "", http.StatusBadRequest, &errorResponse{
			Error: fmt.Sprintf("must be at most %d characters", maxIdempotencyKeyLen), Field: "Idempotency-Key"}
	}
	return key, 0, nil
}

// bodyError answers a body that could not be read.
func bodyError(err error, limit int64) (int, any) {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return http.StatusRequestEntityTooLarge, errorResponse{Error: fmt.Sprintf("body exceeds %d bytes", limit), Field: "body"}
	}
	return http.StatusBadRequest, errorResponse{Error: "reading body: " + err.Error(), Field: "body"}
}

// parseEvent validates one event, naming the field at fault.
func parseEvent(body []byte) (*event.Envelope, *errorResponse) {
	env, err := event.Parse(body)
	if err != nil {
		var verr *event.ValidationError
		if errors.As(err, &verr) {
			return nil, &errorResponse{Error: verr.Message, Field: verr.Field}
		}
		return nil, &errorResponse{Error: err.Error(), Field: "body"}
	}
	return env, nil
}

// authorized compares the bearer token in constant time.
func (r *Relay) authorized(req *http.Request) bool {
	if len(r.cfg.IngestToken) == 0 {
		return true
	}
	got, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), r.cfg.IngestToken) == 1
}

// store writes the event to the event log and returns its id once JetStream
// has acknowledged the write. A resubmission with the same Idempotency-Key
// inside the window gets the id of the first submission.
func (r *Relay) store(ctx context.Context, env *event.Envelope, key string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	msg, msgID := eventMsg(env, key)
	ack, err := r.queue.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID))
	if err != nil {
		return "", fmt.Errorf("publish event: %w", err)
	}
	return r.acceptedID(ctx, msg, ack)
}

// eventMsg is the event log entry for env under a new id, and its message
// id: the idempotency key when there is one.
func eventMsg(env *event.Envelope, key string) (*nats.Msg, string) {
	id := nuid.Next()
	msgID := id
	if key != "" {
		msgID = "idem:" + key
	}
	msg := &nats.Msg{
		Subject: eventsSubjectPrefix + env.Type,
		Header:  nats.Header{},
		Data:    env.Raw,
	}
	msg.Header.Set(hdrEventID, id)
	msg.Header.Set(hdrEventType, env.Type)
	msg.Header.Set(hdrTimestamp, env.Timestamp)
	msg.Header.Set(hdrReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
	return msg, msgID
}

// acceptedID is the id of a stored event: its own, or for a duplicate that
// of the first submission.
func (r *Relay) acceptedID(ctx context.Context, msg *nats.Msg, ack *jetstream.PubAck) (string, error) {
	if !ack.Duplicate {
		return msg.Header.Get(hdrEventID), nil
	}
	first, err := r.queue.events.GetMsg(ctx, ack.Sequence)
	if err != nil {
		return "", fmt.Errorf("read the first submission of idempotency key: %w", err)
	}
	return first.Header.Get(hdrEventID), nil
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
