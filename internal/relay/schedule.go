package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A delivery that cannot run now must not wait in the deliver consumer's
// pending set: every relay shares that consumer, and its MaxAckPending is
// the one place a stuck subscription could take from all the others (a dead
// endpoint with thousands of retries due in three minutes would hold
// thousands of places). So anything that waits longer than nakHoldMax is
// stored as a JetStream scheduled message (Nats-Schedule "@at", ADR-51) on
// its own subject under scheduledSubjectPrefix; at the due time the server
// itself publishes it to the subscription's delivery subject, and the
// consumer sees it then, not before. Waiting costs disk, not places:
//
//   - retries wait for the subscription's interval (retry);
//   - deliveries of a paused endpoint wait for its next probe (hold);
//   - deliveries that found their subscription's window and parking full
//     are handed back briefly twice, then wait 2 s, 4 s, 8 s, ... up to
//     postponeMax (postpone), so a backlog
//     behind a slow endpoint costs one re-publish per delivery per
//     postponeMax at worst, not a bounce per second.
const (
	scheduledSubjectPrefix = "involveo.scheduled."
	// nakHoldMax is the longest wait left in the pending set (a
	// NakWithDelay): shorter than one scheduler tick is not worth a publish.
	nakHoldMax = 2 * time.Second
	// bounceMax is how many times a delivery without room is handed back
	// for bounceDelay (plus jitter) before it is postponed for real.
	bounceMax   = 2
	bounceDelay = 250 * time.Millisecond
	// postponeBase and postponeMax bound the waits of postponed deliveries.
	// The base is nakHoldMax: a postponed delivery always leaves the pending
	// set, or it would bounce there without ever counting as postponed.
	postponeBase = nakHoldMax
	postponeMax  = 10 * time.Minute
)

// hold moves d out of the way until due, unchanged.
func (r *Relay) hold(d *pendingDelivery, due time.Time) {
	r.moveOut(d, due, "hold", d.postponed)
	r.metrics.moved.WithLabelValues("held").Inc()
}

// postpone moves d out of the way for longer each time it found no room.
// The first few times it only goes back to JetStream for a moment: a burst
// (a new subscription whose pace is not known yet, a spike) clears within
// that, and only a lasting surplus costs a re-publish.
func (r *Relay) postpone(d *pendingDelivery) {
	if meta, err := d.msg.Metadata(); err == nil && meta.NumDelivered <= bounceMax {
		_ = d.msg.NakWithDelay(bounceDelay + rand.N(bounceDelay))
		r.metrics.moved.WithLabelValues("bounced").Inc()
		return
	}
	wait := min(postponeBase<<min(d.postponed, 20), postponeMax)
	// Jitter spreads a backlog's returns so it does not come back as one burst.
	wait += rand.N(wait / 2)
	r.moveOut(d, time.Now().Add(wait), "postpone", d.postponed+1)
	r.metrics.moved.WithLabelValues("postponed").Inc()
}

// moveOut stores a copy of d due at due and acknowledges d; a short wait is
// a NakWithDelay instead.
func (r *Relay) moveOut(d *pendingDelivery, due time.Time, step string, postponed int) {
	if wait := time.Until(due); wait < nakHoldMax {
		_ = d.msg.NakWithDelay(max(wait, 0))
		return
	}
	meta, err := d.msg.Metadata()
	if err != nil {
		_ = d.msg.NakWithDelay(nakHoldMax)
		return
	}
	next := &nats.Msg{Subject: d.msg.Subject(), Header: nats.Header{}, Data: d.msg.Data()}
	for k, v := range d.msg.Headers() {
		// Only the relay's own headers: the server's (Nats-Scheduler, ...)
		// would make the copy a schedule purge.
		if strings.HasPrefix(k, "Involveo-") {
			next.Header[k] = v
		}
	}
	if postponed > 0 {
		next.Header.Set(hdrPostponed, strconv.Itoa(postponed))
	}
	// The copy's id names this message, so a crash before the ack stores it
	// once however often the message comes back.
	msgID := d.msgID(strconv.Itoa(d.attempt)) + "/" + step + "-" + strconv.FormatUint(meta.Sequence.Stream, 10)
	// Asynchronously: the dispatcher and the sweeps move deliveries out by
	// the thousand at times, and must not wait for each store in turn.
	future, err := r.queue.js.PublishMsgAsync(next, r.followUpOpts(next, msgID, due)...)
	if err != nil {
		r.storeFailed(d, err)
		return
	}
	release := r.inHand.hold(d.msg)
	r.settling.Go(func() {
		defer release()
		select {
		case <-future.Ok():
			r.ackStored(d)
		case err := <-future.Err():
			r.storeFailed(d, err)
		case <-time.After(settleTimeout):
			r.storeFailed(d, errors.New("no acknowledgement from JetStream"))
		}
	})
}

// storeThenAck stores next, as a scheduled message when it is due later,
// and acknowledges d. When the store fails, d is handed back so its attempt
// is repeated rather than lost.
func (r *Relay) storeThenAck(d *pendingDelivery, next *nats.Msg, msgID string, due time.Time) bool {
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	if _, err := r.queue.js.PublishMsg(ctx, next, r.followUpOpts(next, msgID, due)...); err != nil {
		r.storeFailed(d, err)
		return false
	}
	r.ackStored(d)
	return true
}

// followUpOpts stamps next with its due time and, when it is due later,
// turns it into a scheduled message on its own subject.
func (r *Relay) followUpOpts(next *nats.Msg, msgID string, due time.Time) []jetstream.PublishOpt {
	opts := []jetstream.PublishOpt{jetstream.WithMsgID(msgID)}
	if !due.IsZero() {
		next.Header.Set(hdrNotBefore, due.UTC().Format(time.RFC3339Nano))
		if time.Until(due) >= nakHoldMax && strings.HasPrefix(next.Subject, deliveriesSubjectPrefix) {
			opts = append(opts, jetstream.WithScheduleTarget(next.Subject), jetstream.WithScheduleAt(roundUpToSecond(due)))
			next.Subject = scheduledSubject(next.Subject, msgID)
		}
	}
	return opts
}

func (r *Relay) storeFailed(d *pendingDelivery, err error) {
	r.log.Error(err, "store follow-up of a delivery; it will be attempted again", "subscription", d.subscriptionID)
	_ = d.msg.NakWithDelay(fanoutRetryDelay)
}

func (r *Relay) ackStored(d *pendingDelivery) {
	if err := d.msg.Ack(); err != nil {
		r.log.Error(err, "acknowledge a delivery after storing its follow-up", "subscription", d.subscriptionID)
	}
}

// scheduledSubject is one subject per scheduled message (a schedule replaces
// any earlier one on its subject), under the subscription's token so that
// an operator can count a subscription's waiting deliveries.
func scheduledSubject(target, msgID string) string {
	sum := sha256.Sum256([]byte(msgID))
	return scheduledSubjectPrefix + strings.TrimPrefix(target, deliveriesSubjectPrefix) + "." + hex.EncodeToString(sum[:12])
}

// roundUpToSecond makes a schedule fire no earlier than t: "@at" takes whole
// seconds.
func roundUpToSecond(t time.Time) time.Time {
	if s := t.Truncate(time.Second); s.Before(t) {
		return s.Add(time.Second)
	}
	return t
}
