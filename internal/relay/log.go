package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/involveo/webhook-operator/internal/delivery"
	"github.com/involveo/webhook-operator/internal/health"
)

const (
	attemptsStream        = "INVOLVEO_ATTEMPTS"
	attemptsSubjectPrefix = "involveo.attempts."
	// attemptsMaxAge keeps the delivery log for a week of history even for a
	// subscription that rarely gets events.
	attemptsMaxAge = 7 * 24 * time.Hour
	// maxPageSize bounds one listing page.
	maxPageSize = 500
	// defaultPageSize is a screenful.
	defaultPageSize = 50
)

// logAttempt appends the attempt to the delivery log. The log is for people,
// not for delivery: a write that fails is dropped rather than slowing the
// attempt's settlement.
func (r *Relay) logAttempt(d *pendingDelivery, res delivery.Result, at time.Time) {
	data, err := json.Marshal(health.Attempt{
		Time: at.UTC(), DeliveryID: d.deliveryID, Event: d.eventType, Attempt: d.attempt,
		OK: res.OK(), StatusCode: res.StatusCode, Reason: res.Reason,
		LatencyMs: float64(res.Duration.Microseconds()) / 1000,
	})
	if err != nil {
		return
	}
	_, _ = r.queue.js.PublishMsgAsync(&nats.Msg{
		Subject: attemptsSubjectPrefix + subscriptionToken(d.subscriptionID), Data: data})
}

// listAttempts returns the latest attempts of a subscription, newest first,
// older than the cursor before (a stream sequence) when set.
func (r *Relay) listAttempts(ctx context.Context, subID string, before uint64, limit int) (health.Page[health.Attempt], error) {
	var all []*jetstream.RawStreamMsg
	err := r.scan(ctx, attemptsStream, attemptsSubjectPrefix+subscriptionToken(subID), 1, 0, func(m *jetstream.RawStreamMsg) bool {
		if before == 0 || m.Sequence < before {
			all = append(all, m)
		}
		return true
	})
	page := health.Page[health.Attempt]{Items: []health.Attempt{}}
	if err != nil {
		return page, err
	}
	slices.Reverse(all)
	for i, m := range all {
		if i == limit {
			page.Next = strconv.FormatUint(all[i-1].Sequence, 10)
			break
		}
		var a health.Attempt
		if json.Unmarshal(m.Data, &a) == nil {
			page.Items = append(page.Items, a)
		}
	}
	return page, nil
}

// listDeadLetters returns a subscription's dead letters, oldest first, after
// the cursor (a stream sequence).
func (r *Relay) listDeadLetters(ctx context.Context, subID string, after uint64, limit int) (health.Page[health.DeadLetter], error) {
	page := health.Page[health.DeadLetter]{Items: []health.DeadLetter{}}
	err := r.scan(ctx, deadLettersStream, deadLetterSubjectPrefix+subscriptionToken(subID), after+1, limit+1, func(m *jetstream.RawStreamMsg) bool {
		if len(page.Items) == limit {
			page.Next = strconv.FormatUint(page.Items[limit-1].Seq, 10)
			return false
		}
		page.Items = append(page.Items, deadLetterOf(m))
		return true
	})
	return page, err
}

func deadLetterOf(m *jetstream.RawStreamMsg) health.DeadLetter {
	attempts, _ := strconv.Atoi(m.Header.Get(hdrAttempt))
	status, _ := strconv.Atoi(m.Header.Get(hdrLastStatus))
	return health.DeadLetter{
		Seq: m.Sequence, Time: m.Time.UTC(), DeliveryID: m.Header.Get(hdrDeliveryID),
		EventID: m.Header.Get(hdrEventID), Event: m.Header.Get(hdrEventType),
		Attempts: attempts, StatusCode: status, Reason: m.Header.Get(hdrLastError),
	}
}

// scan visits the messages of one subject from sequence from on, in order,
// until visit returns false, max messages were read (0: no limit) or the
// subject has no more.
func (r *Relay) scan(ctx context.Context, streamName, subject string, from uint64, max int, visit func(*jetstream.RawStreamMsg) bool) error {
	s, err := r.queue.js.Stream(ctx, streamName)
	if err != nil {
		return fmt.Errorf("open stream %s: %w", streamName, err)
	}
	for n := 0; max == 0 || n < max; n++ {
		m, err := s.GetMsg(ctx, from, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", streamName, err)
		}
		if !visit(m) {
			return nil
		}
		from = m.Sequence + 1
	}
	return nil
}

// redeliver re-enqueues a subscription's dead letters (those stored at or
// after since and before until, when set) as first attempts with a fresh retry budget, then
// removes them from the dead-letter stream. It also resumes a paused
// endpoint: asking for a redelivery says the endpoint is back.
func (r *Relay) redeliver(ctx context.Context, subID string, since, until time.Time) (int, error) {
	r.breaker.resume(subID)
	s, err := r.queue.js.Stream(ctx, deadLettersStream)
	if err != nil {
		return 0, fmt.Errorf("open dead letters: %w", err)
	}
	var dead []*jetstream.RawStreamMsg
	if err := r.scan(ctx, deadLettersStream, deadLetterSubjectPrefix+subscriptionToken(subID), 1, 0, func(m *jetstream.RawStreamMsg) bool {
		if !m.Time.Before(since) && (until.IsZero() || m.Time.Before(until)) {
			dead = append(dead, m)
		}
		return true
	}); err != nil {
		return 0, err
	}
	replayed := 0
	for _, m := range dead {
		next := &nats.Msg{Subject: deliveriesSubjectPrefix + subscriptionToken(subID), Header: nats.Header{}, Data: m.Data}
		for _, h := range []string{hdrEventID, hdrEventType, hdrSubscription, hdrDeliveryID} {
			next.Header.Set(h, m.Header.Get(h))
		}
		next.Header.Set(hdrAttempt, "1")
		next.Header.Set(hdrReplay, strconv.FormatUint(m.Sequence, 10))
		// One message id per dead letter: a repeated request cannot enqueue
		// it twice, even if the deletion below did not happen.
		msgID := m.Header.Get(hdrDeliveryID) + "/replay-" + strconv.FormatUint(m.Sequence, 10)
		if _, err := r.queue.js.PublishMsg(ctx, next, jetstream.WithMsgID(msgID)); err != nil {
			return replayed, fmt.Errorf("re-enqueue dead letter %d: %w", m.Sequence, err)
		}
		if err := s.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return replayed, fmt.Errorf("remove replayed dead letter %d: %w", m.Sequence, err)
		}
		replayed++
	}
	r.log.Info("dead letters re-enqueued", "subscription", subID, "replayed", replayed)
	return replayed, nil
}
