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
)

// fanoutRetryDelay is how soon an event whose deliveries could not all be
// stored (deliveries stream full or unavailable) is tried again. The event
// stays in the event log meanwhile, so nothing is lost.
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
// duplicates.
func (r *Relay) fanout(ctx context.Context, msg jetstream.Msg) {
	eventID := msg.Headers().Get(hdrEventID)
	eventType := msg.Headers().Get(hdrEventType)
	if eventID == "" || eventType == "" {
		r.log.Error(errors.New("event without id or type headers"), "dropping malformed event log entry", "subject", msg.Subject())
		_ = msg.Term()
		return
	}
	routes := r.routes.Load()
	matches := routes.Match(eventType)
	futures := make([]jetstream.PubAckFuture, 0, min(len(matches), fanoutBatch))
	for _, route := range matches {
		if len(futures) == fanoutBatch {
			if !r.awaitPublished(ctx, msg, eventType, futures) {
				return
			}
			futures = futures[:0]
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
