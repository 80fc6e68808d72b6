package relay

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/involveo/webhook-operator/internal/delivery"
	"github.com/involveo/webhook-operator/internal/routing"
)

const (
	// deferDelay is how long a delivery waits when its subscription already
	// has MaxInFlightPerSubscription attempts running. Jitter spreads the
	// returns so a backlog does not come back as one burst.
	deferDelay = 500 * time.Millisecond
	// settleTimeout bounds the wait for JetStream to store a retry or a dead
	// letter before the attempt's own message is acknowledged.
	settleTimeout = 10 * time.Second
)

// pendingDelivery is one delivery message as the dispatcher sees it.
type pendingDelivery struct {
	msg            jetstream.Msg
	subscriptionID string
	deliveryID     string
	eventID        string
	eventType      string
	attempt        int
	notBefore      time.Time
}

func parseDelivery(msg jetstream.Msg) (*pendingDelivery, error) {
	h := msg.Headers()
	d := &pendingDelivery{
		msg:            msg,
		subscriptionID: h.Get(hdrSubscription),
		deliveryID:     h.Get(hdrDeliveryID),
		eventID:        h.Get(hdrEventID),
		eventType:      h.Get(hdrEventType),
	}
	if d.subscriptionID == "" || d.deliveryID == "" || d.eventType == "" {
		return nil, errors.New("delivery without subscription, id or event type headers")
	}
	attempt, err := strconv.Atoi(h.Get(hdrAttempt))
	if err != nil || attempt < 1 {
		return nil, fmt.Errorf("delivery %s: bad attempt header %q", d.deliveryID, h.Get(hdrAttempt))
	}
	d.attempt = attempt
	if nb := h.Get(hdrNotBefore); nb != "" {
		if d.notBefore, err = time.Parse(time.RFC3339Nano, nb); err != nil {
			return nil, fmt.Errorf("delivery %s: bad not-before header %q", d.deliveryID, nb)
		}
	}
	return d, nil
}

// inflight counts running attempts per subscription, so that one slow
// endpoint cannot take every worker.
type inflight struct {
	mu    sync.Mutex
	limit int
	n     map[string]int
}

func (f *inflight) acquire(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n[id] >= f.limit {
		return false
	}
	f.n[id]++
	return true
}

func (f *inflight) release(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n[id]--; f.n[id] <= 0 {
		delete(f.n, id)
	}
}

// dispatch hands due deliveries to the worker pool until ctx is done. Every
// message is settled exactly once: acknowledged, handed back with a delay,
// or passed to a worker that settles it.
func (r *Relay) dispatch(ctx context.Context, msg jetstream.Msg, work chan<- *pendingDelivery) {
	d, err := parseDelivery(msg)
	if err != nil {
		r.log.Error(err, "dropping malformed delivery", "subject", msg.Subject())
		_ = msg.Term()
		return
	}
	route, ok := r.routes.Load().Get(d.subscriptionID)
	if !ok {
		r.cancel(d)
		return
	}
	if wait := time.Until(d.notBefore); wait > 0 {
		r.stats.waiting(d.deliveryID, d.subscriptionID)
		_ = msg.NakWithDelay(wait)
		return
	}
	if !r.inflight.acquire(route.ID) {
		_ = msg.NakWithDelay(deferDelay + rand.N(deferDelay))
		return
	}
	select {
	case work <- d:
	case <-ctx.Done():
		r.inflight.release(route.ID)
		_ = msg.Nak()
	}
}

// cancel drops a delivery whose subscription left the routing table.
func (r *Relay) cancel(d *pendingDelivery) {
	r.stats.settled(d.deliveryID)
	r.stats.cancelled(d.subscriptionID)
	if err := d.msg.Ack(); err != nil {
		r.log.Error(err, "acknowledge cancelled delivery", "subscription", d.subscriptionID)
	}
}

// worker runs attempts until work is closed.
func (r *Relay) worker(ctx context.Context, work <-chan *pendingDelivery) {
	for d := range work {
		r.attempt(ctx, d)
		r.inflight.release(d.subscriptionID)
	}
}

// attempt delivers once with the subscription's current route, so an edited
// URL, key or header applies from the next attempt on.
func (r *Relay) attempt(ctx context.Context, d *pendingDelivery) {
	route, ok := r.routes.Load().Get(d.subscriptionID)
	if !ok {
		r.cancel(d)
		return
	}
	res := r.client.Deliver(ctx, delivery.Request{
		URL:        route.URL,
		APIKey:     route.APIKey,
		Headers:    deliveryHeaders(route),
		EventType:  d.eventType,
		DeliveryID: d.deliveryID,
		Body:       d.msg.Data(),
		Timeout:    route.Timeout,
	})
	if res.Canceled {
		// Shutting down: the attempt did not finish, so it does not count.
		_ = d.msg.Nak()
		return
	}
	now := time.Now()
	r.stats.attempt(route.ID, d.eventType, res.OK(), res.StatusCode, res.Reason, now)
	r.metrics.latency.Observe(res.Duration.Seconds())
	result := "failure"
	if res.OK() {
		result = "success"
	}
	r.metrics.deliveries.WithLabelValues(route.ID, result).Inc()

	switch {
	case res.OK():
		r.stats.settled(d.deliveryID)
		if err := d.msg.Ack(); err != nil {
			r.log.Error(err, "acknowledge delivered message; it may be delivered again", "subscription", route.ID)
		}
	case d.attempt <= route.MaxRetries:
		r.retry(d, route, res, now.Add(route.Interval))
	default:
		r.deadLetter(d, route, res)
	}
}

// retry stores the next attempt with its due time, then acknowledges this
// one. If the relay dies in between, this attempt's message comes back and
// the next one is published again under the same message id, which
// JetStream de-duplicates.
func (r *Relay) retry(d *pendingDelivery, route *routing.Route, res delivery.Result, due time.Time) {
	next := r.followUp(d, deliveriesSubjectPrefix+subscriptionToken(route.ID), res)
	next.Header.Set(hdrAttempt, strconv.Itoa(d.attempt+1))
	next.Header.Set(hdrNotBefore, due.UTC().Format(time.RFC3339Nano))
	msgID := d.deliveryID + "/" + strconv.Itoa(d.attempt+1)
	if !r.publishThenAck(d, next, msgID) {
		return
	}
	r.stats.waiting(d.deliveryID, route.ID)
}

// deadLetter records the delivery with its last error after the final
// failed attempt, then acknowledges it.
func (r *Relay) deadLetter(d *pendingDelivery, route *routing.Route, res delivery.Result) {
	dead := r.followUp(d, deadLetterSubjectPrefix+subscriptionToken(route.ID), res)
	dead.Header.Set(hdrAttempt, strconv.Itoa(d.attempt))
	if !r.publishThenAck(d, dead, d.deliveryID+"/dead") {
		return
	}
	r.stats.settled(d.deliveryID)
	r.stats.deadLettered(route.ID)
	r.metrics.deadLetters.WithLabelValues(route.ID).Inc()
	r.log.Info("delivery dead-lettered", "subscription", route.ID, "event", d.eventType,
		"delivery", d.deliveryID, "attempts", d.attempt, "reason", res.Reason)
}

// followUp copies a delivery's identity into a new message with the
// attempt's outcome.
func (r *Relay) followUp(d *pendingDelivery, subject string, res delivery.Result) *nats.Msg {
	m := &nats.Msg{Subject: subject, Header: nats.Header{}, Data: d.msg.Data()}
	m.Header.Set(hdrEventID, d.eventID)
	m.Header.Set(hdrEventType, d.eventType)
	m.Header.Set(hdrSubscription, d.subscriptionID)
	m.Header.Set(hdrDeliveryID, d.deliveryID)
	m.Header.Set(hdrLastError, res.Reason)
	if res.StatusCode != 0 {
		m.Header.Set(hdrLastStatus, strconv.Itoa(res.StatusCode))
	}
	return m
}

// publishThenAck stores next and acknowledges d. When the store fails, d is
// handed back so the attempt is repeated rather than lost.
func (r *Relay) publishThenAck(d *pendingDelivery, next *nats.Msg, msgID string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	if _, err := r.queue.js.PublishMsg(ctx, next, jetstream.WithMsgID(msgID)); err != nil {
		r.log.Error(err, "store follow-up of failed delivery; it will be attempted again", "subscription", d.subscriptionID)
		_ = d.msg.NakWithDelay(fanoutRetryDelay)
		return false
	}
	if err := d.msg.Ack(); err != nil {
		r.log.Error(err, "acknowledge failed attempt", "subscription", d.subscriptionID)
	}
	return true
}

func deliveryHeaders(route *routing.Route) []delivery.Header {
	out := make([]delivery.Header, len(route.Headers))
	for i, h := range route.Headers {
		out[i] = delivery.Header{Name: h.Name, Value: h.Value}
	}
	return out
}
