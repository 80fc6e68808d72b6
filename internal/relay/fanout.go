package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/involveo/webhook-operator/internal/filter"
	"github.com/involveo/webhook-operator/internal/routing"
)

// fanoutRetryDelay is how soon a message whose follow-up could not be stored
// (deliveries stream full or unavailable) is tried again: an event's
// deliveries, or a delivery's scheduled copy. The original stays where it is
// meanwhile, so nothing is lost.
const fanoutRetryDelay = time.Second

// fanoutBatch is how many deliveries are published before waiting for their
// acknowledgements: enough to pipeline, and below the client's limit of
// outstanding asynchronous publishes.
const fanoutBatch = 512

// subscriptionToken turns a subscription id (namespace/name, which may hold
// dots) into one NATS subject token.
func subscriptionToken(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:8])
}

// deliveryID is stable across retries and restarts: receivers de-duplicate
// on it (X-Involveo-Delivery).
func deliveryID(eventID, subscriptionID string) string {
	return eventID + "-" + subscriptionToken(subscriptionID)
}

// fanout turns one stored event into one delivery per matching subscription,
// then acknowledges the event. Deliveries carry a message id, so publishing
// them again after a crash between the publish and the ack creates no
// duplicates. An event still waiting for room when stop closes is handed
// back, so a shutdown does not wait for the deliveries stream to drain.
func (r *Relay) fanout(ctx context.Context, stop <-chan struct{}, msg jetstream.Msg) {
	eventID := msg.Headers().Get(hdrEventID)
	eventType := msg.Headers().Get(hdrEventType)
	if eventID == "" || eventType == "" {
		r.log.Error(errors.New("event without id or type headers"), "dropping malformed event log entry", "subject", msg.Subject())
		_ = msg.Term()
		return
	}
	if !r.waitForRoom(ctx, stop, msg) {
		return
	}
	routes := r.routes.Load()
	matches := r.filterRoutes(ctx, msg, eventType, routes.Match(eventType))
	futures := make([]jetstream.PubAckFuture, 0, min(len(matches), fanoutBatch))
	for _, route := range matches {
		if len(futures) == fanoutBatch {
			if !r.awaitPublished(ctx, msg, eventType, futures) {
				return
			}
			futures = futures[:0]
			// A fan-out to thousands of routes may outlast AckWait.
			_ = msg.InProgress()
		}
		d := &nats.Msg{
			Subject: deliveriesSubjectPrefix + subscriptionToken(route.ID),
			Header:  nats.Header{},
			Data:    msg.Data(),
		}
		id := deliveryID(eventID, route.ID)
		d.Header.Set(hdrEventID, eventID)
		d.Header.Set(hdrEventType, eventType)
		d.Header.Set(hdrSubscription, route.ID)
		d.Header.Set(hdrDeliveryID, id)
		d.Header.Set(hdrAttempt, "1")
		f, err := r.queue.js.PublishMsgAsync(d, jetstream.WithMsgID(id+"/1"))
		if err != nil {
			r.fanoutFailed(msg, eventType, err)
			return
		}
		futures = append(futures, f)
	}
	if !r.awaitPublished(ctx, msg, eventType, futures) {
		return
	}
	if err := msg.Ack(); err != nil {
		r.log.Error(err, "acknowledge event after fan-out; it will be fanned out again and de-duplicated", "event", eventType)
	}
}

// waitForRoom holds fan-out while pending deliveries are over their size
// limit: the events wait where they are, and ingest refuses new ones once
// the event log is full too.
func (r *Relay) waitForRoom(ctx context.Context, stop <-chan struct{}, msg jetstream.Msg) bool {
	for r.queue.deliveriesFull.Load() {
		_ = msg.InProgress()
		select {
		case <-ctx.Done():
			_ = msg.Nak()
			return false
		case <-stop:
			_ = msg.Nak()
			return false
		case <-time.After(deliveriesCheckEvery):
		}
	}
	return true
}

// filterRoutes drops the routes whose filter does not pass the event. The
// event's data is decoded once, and only when a matching route has a filter.
func (r *Relay) filterRoutes(ctx context.Context, msg jetstream.Msg, eventType string, matches []*routing.Route) []*routing.Route {
	var data any
	decoded := false
	kept := matches[:0]
	for _, route := range matches {
		if route.Filter == nil {
			kept = append(kept, route)
			continue
		}
		var err error
		if !decoded {
			data, err = filter.DecodeData(msg.Data())
			decoded = true
		}
		pass := false
		if err == nil {
			pass, err = route.Filter.Eval(ctx, eventType, msg.Headers().Get(hdrTimestamp), data)
		}
		switch {
		case err != nil:
			r.metrics.filtered.WithLabelValues(route.ID, "error").Inc()
			r.stats.filtered(route.ID, true)
			r.log.V(1).Info("filter could not decide; not delivering", "subscription", route.ID, "event", eventType, "error", err.Error())
		case !pass:
			r.metrics.filtered.WithLabelValues(route.ID, "filtered").Inc()
			r.stats.filtered(route.ID, false)
		default:
			kept = append(kept, route)
		}
	}
	return kept
}

// awaitPublished waits until JetStream stored every delivery in futures; on
// failure it hands the event back for another fan-out and returns false.
func (r *Relay) awaitPublished(ctx context.Context, msg jetstream.Msg, eventType string, futures []jetstream.PubAckFuture) bool {
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			r.fanoutFailed(msg, eventType, err)
			return false
		case <-ctx.Done():
			_ = msg.Nak()
			return false
		}
	}
	return true
}

func (r *Relay) fanoutFailed(msg jetstream.Msg, eventType string, err error) {
	r.log.Error(fmt.Errorf("store deliveries: %w", err), "fan-out failed; retrying", "event", eventType)
	_ = msg.NakWithDelay(fanoutRetryDelay)
}
