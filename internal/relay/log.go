package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
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

// The delivery log is written in batches: the attempts of one subscription
// that finish within attemptFlushEvery share one message. At a high rate
// that is one JetStream write per subscription per flush instead of one per
// attempt (a third of the relay's writes per delivery); at a low rate it is
// one message per attempt, as if unbatched. The log is for people, not for
// delivery: a write that fails is dropped rather than slowing settlement.
const (
	attemptFlushEvery = 100 * time.Millisecond
	// attemptIndexBits is how many low bits of a listing cursor number an
	// attempt within its message; a batch holds at most 1<<attemptIndexBits.
	attemptIndexBits = 10
	attemptBatchMax  = 1 << attemptIndexBits
)

// attemptLog collects attempts until the next flush, by subject.
type attemptLog struct {
	mu      sync.Mutex
	pending map[string][]health.Attempt
	// full wakes the flusher when a batch reaches attemptBatchMax.
	full chan struct{}
}

func newAttemptLog() *attemptLog {
	return &attemptLog{pending: map[string][]health.Attempt{}, full: make(chan struct{}, 1)}
}

func (l *attemptLog) add(subject string, a health.Attempt) {
	l.mu.Lock()
	batch := append(l.pending[subject], a)
	l.pending[subject] = batch
	l.mu.Unlock()
	if len(batch) >= attemptBatchMax {
		select {
		case l.full <- struct{}{}:
		default:
		}
	}
}

func (l *attemptLog) take() map[string][]health.Attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pending) == 0 {
		return nil
	}
	out := l.pending
	l.pending = map[string][]health.Attempt{}
	return out
}

// logAttempt adds the attempt to the delivery log's next batch.
func (r *Relay) logAttempt(d *pendingDelivery, res delivery.Result, at time.Time) {
	r.attemptLog.add(attemptsSubjectPrefix+subscriptionToken(d.subscriptionID), health.Attempt{
		Time: at.UTC(), DeliveryID: d.deliveryID, Event: d.eventType, Attempt: d.attempt,
		OK: res.OK(), StatusCode: res.StatusCode, Reason: res.Reason,
		LatencyMs: float64(res.Duration.Microseconds()) / 1000,
	})
}

// flushAttempts writes the delivery log's batches every attemptFlushEvery,
// and once more when ctx is done, until then.
func (r *Relay) flushAttempts(ctx context.Context) {
	t := time.NewTicker(attemptFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			r.writeAttempts()
			return
		case <-t.C:
		case <-r.attemptLog.full:
		}
		r.writeAttempts()
	}
}

func (r *Relay) writeAttempts() {
	for subject, batch := range r.attemptLog.take() {
		for len(batch) > 0 {
			n := min(len(batch), attemptBatchMax)
			if data, err := json.Marshal(batch[:n]); err == nil {
				_, _ = r.queue.js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: data})
			}
			batch = batch[n:]
		}
	}
}

// listAttempts returns the latest attempts of a subscription, newest first,
// older than the cursor before when set. A cursor is a position in the log:
// the message's stream sequence and, in its low attemptIndexBits bits, the
// attempt's index within the message.
func (r *Relay) listAttempts(ctx context.Context, subID string, before uint64, limit int) (health.Page[health.Attempt], error) {
	type logged struct {
		pos uint64
		a   health.Attempt
	}
	// Only the newest limit+1 are kept while scanning oldest first: one more
	// than the page tells whether there is a next one, and a busy
	// subscription's log may hold hundreds of thousands of attempts.
	var all []logged
	err := r.scan(ctx, attemptsStream, attemptsSubjectPrefix+subscriptionToken(subID), 1, 0, func(m *jetstream.RawStreamMsg) bool {
		for i, a := range decodeAttempts(m.Data) {
			if pos := m.Sequence<<attemptIndexBits | uint64(i); before == 0 || pos < before {
				all = append(all, logged{pos, a})
				if len(all) > limit+1 {
					all = all[1:]
				}
			}
		}
		return true
	})
	page := health.Page[health.Attempt]{Items: []health.Attempt{}}
	if err != nil {
		return page, err
	}
	slices.Reverse(all)
	for i, l := range all {
		if i == limit {
			page.Next = strconv.FormatUint(all[i-1].pos, 10)
			break
		}
		page.Items = append(page.Items, l.a)
	}
	return page, nil
}

// decodeAttempts reads one delivery log message: a batch, oldest first, or
// a single attempt as relays wrote them before batching.
func decodeAttempts(data []byte) []health.Attempt {
	var batch []health.Attempt
	if json.Unmarshal(data, &batch) == nil {
		return batch
	}
	var one health.Attempt
	if json.Unmarshal(data, &one) == nil {
		return []health.Attempt{one}
	}
	return nil
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
