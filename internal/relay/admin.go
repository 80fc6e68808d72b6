package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/involveo/webhook-operator/internal/health"
)

// subscriptionOf returns the subscription id of a per-subscription admin
// request, answering 404 itself for one the routing table does not hold.
func (r *Relay) subscriptionOf(w http.ResponseWriter, req *http.Request) (string, bool) {
	if !r.queueReady.Load() {
		writeJSON(w, http.StatusServiceUnavailable, errorResponse{Error: "the relay is still opening its queue"})
		return "", false
	}
	id := req.PathValue("namespace") + "/" + req.PathValue("name")
	if _, ok := r.routes.Load().Get(id); !ok {
		writeJSON(w, http.StatusNotFound, errorResponse{Error: "subscription " + id + " is not in the loaded routing table"})
		return "", false
	}
	return id, true
}

// pageParams reads limit and the cursor (after) of a listing.
func pageParams(req *http.Request) (cursor uint64, limit int, err error) {
	limit = defaultPageSize
	if v := req.URL.Query().Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxPageSize {
			return 0, 0, fmt.Errorf("limit must be 1..%d", maxPageSize)
		}
	}
	if v := req.URL.Query().Get("after"); v != "" {
		if cursor, err = strconv.ParseUint(v, 10, 64); err != nil {
			return 0, 0, fmt.Errorf("after must be a cursor from a previous page")
		}
	}
	return cursor, limit, nil
}

func (r *Relay) handleAttempts(w http.ResponseWriter, req *http.Request) {
	servePage(r, w, req, r.listAttempts)
}

func (r *Relay) handleDeadLetters(w http.ResponseWriter, req *http.Request) {
	servePage(r, w, req, r.listDeadLetters)
}

// servePage answers a paginated per-subscription listing.
func servePage[T any](r *Relay, w http.ResponseWriter, req *http.Request,
	list func(ctx context.Context, subID string, cursor uint64, limit int) (health.Page[T], error)) {
	id, ok := r.subscriptionOf(w, req)
	if !ok {
		return
	}
	cursor, limit, err := pageParams(req)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorResponse{Error: err.Error()})
		return
	}
	page, err := list(req.Context(), id, cursor, limit)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, errorResponse{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func (r *Relay) handleRedeliver(w http.ResponseWriter, req *http.Request) {
	id, ok := r.subscriptionOf(w, req)
	if !ok {
		return
	}
	var bounds [2]time.Time
	for i, name := range []string{"since", "until"} {
		if v := req.URL.Query().Get(name); v != "" {
			var err error
			if bounds[i], err = time.Parse(time.RFC3339Nano, v); err != nil {
				writeJSON(w, http.StatusBadRequest, errorResponse{Error: name + " must be an RFC 3339 time", Field: name})
				return
			}
		}
	}
	n, err := r.redeliver(req.Context(), id, bounds[0], bounds[1])
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, errorResponse{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"replayed": n})
}

// handleTest delivers a test task.created to one subscription now, bypassing
// fan-out and its filter: the point is to check the endpoint. The body is a
// valid task.created with "test": true at the top level and the tag "test".
func (r *Relay) handleTest(w http.ResponseWriter, req *http.Request) {
	id, ok := r.subscriptionOf(w, req)
	if !ok {
		return
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	body, err := json.Marshal(map[string]any{
		"event": "task.created", "timestamp": now, "test": true,
		"data": map[string]any{
			"task": map[string]any{
				"title": "Test event", "content": "Sent by the Involveo webhook operator to check this endpoint.",
				"status": "new", "tags": []string{"test"}, "time_create": now, "email": nil,
			},
			"user": map[string]any{"type": "internal", "email": "test@involveo.invalid", "name": "Involveo test",
				"company": nil, "custom_fields": map[string]any{}},
		},
	})
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, errorResponse{Error: err.Error()})
		return
	}
	eventID := nuid.Next()
	msg := &nats.Msg{Subject: deliveriesSubjectPrefix + subscriptionToken(id), Header: nats.Header{}, Data: body}
	msg.Header.Set(hdrEventID, eventID)
	msg.Header.Set(hdrEventType, "task.created")
	msg.Header.Set(hdrSubscription, id)
	msg.Header.Set(hdrDeliveryID, deliveryID(eventID, id))
	msg.Header.Set(hdrAttempt, "1")
	if _, err := r.queue.js.PublishMsg(req.Context(), msg, jetstream.WithMsgID(deliveryID(eventID, id)+"/1")); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, errorResponse{Error: "store the test delivery: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusAccepted, ingestResponse{ID: eventID, Deliveries: 1})
}
