package relay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/involveo/webhook-operator/internal/delivery"
	"github.com/involveo/webhook-operator/internal/routing"
	"github.com/involveo/webhook-operator/internal/signing"
)

const (
	// parkSweepEvery is how often parked surplus of stalled lanes is given
	// back.
	parkSweepEvery = time.Second
	// relayFullRecheck is how often a dispatcher waiting for parking room
	// looks again without being woken.
	relayFullRecheck = time.Second
	// clockSkewMaxWait bounds one wait for this relay's clock to catch up
	// with JetStream's.
	clockSkewMaxWait = 5 * time.Second
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
	// postponed counts how often it was moved out of the way for lack of a
	// slot; each time it waits longer.
	postponed int
	// parked is set once the slots parked it in memory.
	parked bool
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
	if n := h.Get(hdrPostponed); n != "" {
		if d.postponed, err = strconv.Atoi(n); err != nil || d.postponed < 0 {
			return nil, fmt.Errorf("delivery %s: bad postponed header %q", d.deliveryID, n)
		}
	}
	if nb := h.Get(hdrNotBefore); nb != "" {
		if d.notBefore, err = time.Parse(time.RFC3339Nano, nb); err != nil {
			return nil, fmt.Errorf("delivery %s: bad not-before header %q", d.deliveryID, nb)
		}
	}
	return d, nil
}

// dispatch takes one delivery from JetStream: it starts the delivery (or
// parked ones whose turn came), parks it, or moves it out of the consumer's
// pending set until it can run (hold, postpone). It waits only when the
// relay as a whole has no room, which is when pulling more would not help.
func (r *Relay) dispatch(ctx context.Context, msg jetstream.Msg) {
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
	if d.notBefore.After(time.Now()) {
		r.stats.waiting(d.deliveryID, d.subscriptionID, r.waitingExpires(d.notBefore))
		if msg.Headers().Get(jetstream.SchedulerHeader) != "" {
			// JetStream's scheduler fired it, so its clock says it is due:
			// this relay's clock is behind. Scheduling it again would fire at
			// once and loop; wait out the difference here instead.
			_ = msg.NakWithDelay(min(time.Until(d.notBefore), clockSkewMaxWait))
			return
		}
		r.hold(d, d.notBefore)
		return
	}
	if ok, hold := r.breaker.admit(route.ID, time.Now()); !ok {
		// Paused endpoint: the delivery waits in JetStream until the next
		// probe is due (hold).
		r.hold(d, time.Now().Add(hold))
		return
	}
	for {
		if route, ok = r.routes.Load().Get(d.subscriptionID); !ok {
			r.cancel(d)
			return
		}
		start, evicted, v := r.slots.admit(d, route)
		for _, e := range evicted {
			r.postpone(e)
		}
		switch v {
		case taken:
			r.start(ctx, start)
			return
		case laneFull:
			r.postpone(d)
			return
		}
		select {
		case <-r.slots.room:
		case <-time.After(relayFullRecheck):
			// Lanes that stop making progress fit less as time passes; the
			// next admit gives their surplus back.
		case <-ctx.Done():
			_ = msg.Nak()
			return
		}
	}
}

// start runs each delivery on a goroutine of its own; the slots have already
// counted them against the worker pool.
func (r *Relay) start(ctx context.Context, ds []*pendingDelivery) {
	for _, d := range ds {
		r.attempts.Go(func() { r.run(ctx, d) })
	}
}

// run attempts d, then whatever the slots hand this goroutine next.
func (r *Relay) run(ctx context.Context, d *pendingDelivery) {
	for d != nil {
		release := r.inHand.hold(d.msg)
		o, took := r.attempt(ctx, d)
		release()
		route, _ := r.routes.Load().Get(d.subscriptionID)
		start, evicted := r.slots.done(d.subscriptionID, route, o, took)
		for _, e := range evicted {
			r.postpone(e)
		}
		d = nil
		if len(start) > 0 {
			d = start[0]
			r.start(ctx, start[1:])
		}
	}
}

// sweepParked gives back, every parkSweepEvery until ctx is done, what no
// longer fits lanes that stopped making progress: nothing else would evict
// their parked surplus while nothing new arrives for them.
func (r *Relay) sweepParked(ctx context.Context) {
	sweep := time.NewTicker(parkSweepEvery)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			for _, d := range r.slots.sweepAll() {
				r.postpone(d)
			}
		}
	}
}

// reportProgress tells JetStream, every quarter of AckWait until ctx is done,
// that the deliveries this relay holds (parked and in hand) are still being
// worked on, so none is handed out twice while it waits or its attempt runs.
// It has a goroutine of its own: a sweep that waits for JetStream to take
// what it moves out must not delay it.
func (r *Relay) reportProgress(ctx context.Context) {
	progress := time.NewTicker(max(r.cfg.Queue.DeliverAckWait/4, time.Millisecond))
	defer progress.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-progress.C:
			for _, d := range r.slots.parkedDeliveries() {
				_ = d.msg.InProgress()
			}
			for _, m := range r.inHand.all() {
				_ = m.InProgress()
			}
		}
	}
}

// waitingExpires is when a retry due at due stops counting as pending here
// if this relay never sees it settle: time for another replica to pick it up
// (AckWait) and run its longest attempt.
func (r *Relay) waitingExpires(due time.Time) time.Time {
	return due.Add(r.cfg.Queue.DeliverAckWait + routing.MaxTimeout)
}

// cancel drops a delivery whose subscription left the routing table.
func (r *Relay) cancel(d *pendingDelivery) {
	r.stats.settled(d.deliveryID)
	r.stats.cancelled(d.subscriptionID)
	if err := d.msg.Ack(); err != nil {
		r.log.Error(err, "acknowledge cancelled delivery", "subscription", d.subscriptionID)
	}
}

// attempt delivers once with the subscription's current route, so an edited
// URL, key or header applies from the next attempt on.
func (r *Relay) attempt(ctx context.Context, d *pendingDelivery) (outcome, time.Duration) {
	route, ok := r.routes.Load().Get(d.subscriptionID)
	if !ok {
		r.cancel(d)
		return aborted, 0
	}
	if err := r.limiters.wait(ctx, route); err != nil {
		// Shutting down while waiting for a token: hand it back.
		_ = d.msg.Nak()
		return aborted, 0
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
		return aborted, res.Duration
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
	switch {
	case res.OK():
		return succeeded, res.Duration
	case res.StatusCode == 0:
		return unanswered, res.Duration
	default:
		return answered, res.Duration
	}
}

// retry stores the next attempt, due after the subscription's interval, then
// acknowledges this one. If the relay dies in between, this attempt's
// message comes back and the next one is stored again under the same
// message id, which JetStream de-duplicates.
func (r *Relay) retry(d *pendingDelivery, route *routing.Route, res delivery.Result, due time.Time) {
	next := r.followUp(d, deliveriesSubjectPrefix+subscriptionToken(route.ID), res)
	next.Header.Set(hdrAttempt, strconv.Itoa(d.attempt+1))
	if !r.storeThenAck(d, next, d.msgID(strconv.Itoa(d.attempt+1)), due) {
		return
	}
	r.stats.waiting(d.deliveryID, route.ID, r.waitingExpires(due))
}

// deadLetter records the delivery with its last error after the final
// failed attempt, then acknowledges it.
func (r *Relay) deadLetter(d *pendingDelivery, route *routing.Route, res delivery.Result) {
	dead := r.followUp(d, deadLetterSubjectPrefix+subscriptionToken(route.ID), res)
	dead.Header.Set(hdrAttempt, strconv.Itoa(d.attempt))
	if !r.storeThenAck(d, dead, d.msgID("dead"), time.Time{}) {
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
