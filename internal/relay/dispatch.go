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
	"github.com/involveo/webhook-operator/internal/signing"
)

const (
	// deferDelay is how long a delivery waits when its subscription already
	// has MaxInFlightPerSubscription attempts running and as many parked as
	// is safe. Jitter spreads the returns so a backlog does not come back as
	// one burst.
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
	// replay is the dead-letter sequence this delivery was redelivered from,
	// empty on its first run.
	replay string
}

// msgID names one follow-up of the delivery (an attempt number or "dead"),
// distinct per redelivery run.
func (d *pendingDelivery) msgID(step string) string {
	if d.replay != "" {
		return d.deliveryID + "/r" + d.replay + "/" + step
	}
	return d.deliveryID + "/" + step
}

func parseDelivery(msg jetstream.Msg) (*pendingDelivery, error) {
	h := msg.Headers()
	d := &pendingDelivery{
		msg:            msg,
		subscriptionID: h.Get(hdrSubscription),
		deliveryID:     h.Get(hdrDeliveryID),
		eventID:        h.Get(hdrEventID),
		eventType:      h.Get(hdrEventType),
		replay:         h.Get(hdrReplay),
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
// endpoint cannot take every worker. A delivery that finds its subscription
// at the cap is parked in memory and started by the next attempt of that
// subscription to finish, instead of going back to JetStream with a delay:
// a busy but healthy endpoint would otherwise see its backlog bounce
// between the relay and the store.
type inflight struct {
	mu       sync.Mutex
	limit    int
	ackWait  time.Duration
	replicas int
	n        map[string]int
	parked   map[string][]*pendingDelivery
}

// parkLimit bounds the parked deliveries of a route so that the last one
// starts within half of AckWait even if every running attempt runs to its
// timeout; otherwise JetStream would hand it out a second time.
//
// A rate-limited route also parks no more than it may start in that time.
func (f *inflight) parkLimit(route *routing.Route) int {
	n := f.limitOf(route) * max(1, int(f.ackWait/(2*max(route.Timeout, time.Second))))
	if route.RatePerSecond > 0 {
		// This relay's share of the rate, less the running slots that wait
		// for tokens too.
		perRelay := route.RatePerSecond / float64(max(f.replicas, 1))
		n = min(n, max(1, int(perRelay*(f.ackWait/2).Seconds())-f.limitOf(route)))
	}
	return n
}

// limitOf is the route's own cap, or the relay's default.
func (f *inflight) limitOf(route *routing.Route) int {
	if route.MaxInFlight > 0 {
		return route.MaxInFlight
	}
	return f.limit
}

// admit starts d if its subscription is below the cap (run), else parks it
// (parked), else neither: the caller hands it back to JetStream.
func (f *inflight) admit(d *pendingDelivery, route *routing.Route) (run, parked bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := d.subscriptionID
	if f.n[id] < f.limitOf(route) {
		f.n[id]++
		return true, false
	}
	if len(f.parked[id]) < f.parkLimit(route) {
		f.parked[id] = append(f.parked[id], d)
		return false, true
	}
	return false, false
}

// next hands the finished attempt's slot to the subscription's next parked
// delivery, or frees the slot and returns nil.
func (f *inflight) next(id string) *pendingDelivery {
	f.mu.Lock()
	defer f.mu.Unlock()
	if q := f.parked[id]; len(q) > 0 {
		d := q[0]
		if len(q) == 1 {
			delete(f.parked, id)
		} else {
			f.parked[id] = q[1:]
		}
		return d
	}
	if f.n[id]--; f.n[id] <= 0 {
		delete(f.n, id)
	}
	return nil
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
		r.stats.waiting(d.deliveryID, d.subscriptionID, d.notBefore.Add(r.cfg.Queue.DeliverAckWait))
		_ = msg.NakWithDelay(wait)
		return
	}
	if ok, hold := r.breaker.admit(route.ID, time.Now()); !ok {
		// Paused endpoint: the delivery stays in JetStream until a probe
		// succeeds or someone asks for a redelivery.
		_ = msg.NakWithDelay(hold)
		return
	}
	run, parked := r.inflight.admit(d, route)
	if parked {
		return
	}
	if !run {
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

// worker runs attempts until work is closed, then the deliveries parked
// behind each of them.
func (r *Relay) worker(ctx context.Context, work <-chan *pendingDelivery) {
	for d := range work {
		for d != nil {
			r.attempt(ctx, d)
			if d = r.inflight.next(d.subscriptionID); d != nil {
				// Parked time counted against AckWait; the attempt gets it afresh.
				_ = d.msg.InProgress()
			}
		}
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
	if err := r.limiters.wait(ctx, route); err != nil {
		// Shutting down while waiting for a token: hand it back.
		_ = d.msg.Nak()
		return
	}
	res := r.client.Deliver(ctx, delivery.Request{
		URL:        route.URL,
		APIKey:     route.APIKey,
		Headers:    deliveryHeaders(route, d.deliveryID, d.msg.Data(), time.Now()),
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
	if res.Gone() {
		res.Reason = "Gone: " + res.Reason
	}
	now := time.Now()
	r.stats.attempt(route.ID, d.eventType, res.OK(), res.StatusCode, res.Reason, now)
	r.metrics.latency.Observe(res.Duration.Seconds())
	result := "failure"
	if res.OK() {
		result = "success"
	}
	r.metrics.deliveries.WithLabelValues(route.ID, result).Inc()
	r.logAttempt(d, res, now)
	r.trip(route, d, res, now)

	switch {
	case res.OK():
		r.stats.settled(d.deliveryID)
		if err := d.msg.Ack(); err != nil {
			r.log.Error(err, "acknowledge delivered message; it may be delivered again", "subscription", route.ID)
		}
	case res.Gone():
		// The receiver says the endpoint is gone for good: retrying is noise.
		r.deadLetter(d, route, res)
	case d.attempt <= route.MaxRetries:
		r.retry(d, route, res, now.Add(retryDelay(route, res)))
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
	if !r.publishThenAck(d, next, d.msgID(strconv.Itoa(d.attempt+1))) {
		return
	}
	r.stats.waiting(d.deliveryID, route.ID, due.Add(r.cfg.Queue.DeliverAckWait))
}

// deadLetter records the delivery with its last error after the final
// failed attempt, then acknowledges it.
func (r *Relay) deadLetter(d *pendingDelivery, route *routing.Route, res delivery.Result) {
	dead := r.followUp(d, deadLetterSubjectPrefix+subscriptionToken(route.ID), res)
	dead.Header.Set(hdrAttempt, strconv.Itoa(d.attempt))
	if !r.publishThenAck(d, dead, d.msgID("dead")) {
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
	if d.replay != "" {
		m.Header.Set(hdrReplay, d.replay)
	}
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

// trip feeds the attempt's outcome to the breaker and says so when it pauses
// or resumes the endpoint.
func (r *Relay) trip(route *routing.Route, d *pendingDelivery, res delivery.Result, now time.Time) {
	if res.OK() {
		if r.breaker.succeeded(route.ID) {
			r.log.Info("endpoint resumed after a successful probe", "subscription", route.ID)
		}
		return
	}
	lastAttempt := res.Gone() || d.attempt > route.MaxRetries
	if r.breaker.failed(route.ID, now, lastAttempt) {
		p := r.breaker.pause(route.ID)
		r.log.Info("endpoint paused; deliveries are held until a probe succeeds or a redelivery is requested",
			"subscription", route.ID, "reason", p.Reason, "nextProbe", p.NextProbe)
	}
}

// retryAfterCap bounds how far a receiver's Retry-After may push the next
// attempt, in multiples of the subscription's interval.
const retryAfterCap = 10

// retryDelay is the subscription's interval, or longer when a 429 or 503
// asked for it with Retry-After. Either way it is the same retry: honouring
// the receiver never costs an extra attempt.
func retryDelay(route *routing.Route, res delivery.Result) time.Duration {
	return max(route.Interval, min(res.RetryAfter, retryAfterCap*route.Interval))
}

// deliveryHeaders are the route's extra headers plus, for a signing route,
// the Standard Webhooks headers of this attempt.
func deliveryHeaders(route *routing.Route, deliveryID string, body []byte, now time.Time) []delivery.Header {
	out := make([]delivery.Header, 0, len(route.Headers)+3)
	for _, h := range route.Headers {
		out = append(out, delivery.Header{Name: h.Name, Value: h.Value})
	}
	if len(route.Signing) > 0 {
		sig := signing.Sign(deliveryID, now, body, route.Signing...)
		out = append(out,
			delivery.Header{Name: signing.HeaderID, Value: sig.ID},
			delivery.Header{Name: signing.HeaderTimestamp, Value: sig.Timestamp},
			delivery.Header{Name: signing.HeaderSignature, Value: sig.Signature})
	}
	return out
}
