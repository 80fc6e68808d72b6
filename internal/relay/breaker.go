package relay

import (
	"fmt"
	"sync"
	"time"

	"github.com/involveo/webhook-operator/internal/health"
)

// BreakerConfig sets when an endpoint is paused. The defaults are days, not
// minutes: a pause is for an endpoint that is gone, not one having a bad
// afternoon, which retries and dead letters already handle.
type BreakerConfig struct {
	// AfterDeadLetters pauses after this many dead letters in a row; 0 never.
	AfterDeadLetters int
	// AfterFailing pauses after failing without a success this long; 0 never.
	AfterFailing time.Duration
	// ProbeEvery is how often one held delivery is let through to test a
	// paused endpoint.
	ProbeEvery time.Duration
}

// breaker pauses endpoints that keep failing. A paused endpoint's deliveries
// stay in JetStream (held, not dropped) and one of them is let through every
// ProbeEvery; its success resumes the endpoint, as does a redelivery request.
type breaker struct {
	cfg  BreakerConfig
	mu   sync.Mutex
	subs map[string]*breakerState
}

type breakerState struct {
	deadStreak   int
	failingSince time.Time
	pausedSince  time.Time
	reason       string
	nextProbe    time.Time
}

func newBreaker(cfg BreakerConfig) *breaker {
	return &breaker{cfg: cfg, subs: map[string]*breakerState{}}
}

func (b *breaker) get(id string) *breakerState {
	s, ok := b.subs[id]
	if !ok {
		s = &breakerState{}
		b.subs[id] = s
	}
	return s
}

// admit says whether a delivery of id may be attempted now, and if not, how
// long to hold it.
func (b *breaker) admit(id string, now time.Time) (bool, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.subs[id]
	if !ok || s.pausedSince.IsZero() {
		return true, 0
	}
	if !now.Before(s.nextProbe) {
		s.nextProbe = now.Add(b.cfg.ProbeEvery)
		return true, 0
	}
	return false, s.nextProbe.Sub(now)
}

// succeeded records a 200 and reports whether it resumed a paused endpoint.
func (b *breaker) succeeded(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.subs[id]
	if !ok {
		return false
	}
	delete(b.subs, id)
	return !s.pausedSince.IsZero()
}

// failed records a failed attempt and reports whether it paused the endpoint.
func (b *breaker) failed(id string, now time.Time, deadLettered bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.get(id)
	if s.failingSince.IsZero() {
		s.failingSince = now
	}
	if deadLettered {
		s.deadStreak++
	}
	if !s.pausedSince.IsZero() {
		return false
	}
	switch {
	case b.cfg.AfterDeadLetters > 0 && s.deadStreak >= b.cfg.AfterDeadLetters:
		s.reason = fmt.Sprintf("%d deliveries in a row were dead-lettered", s.deadStreak)
	case b.cfg.AfterFailing > 0 && now.Sub(s.failingSince) >= b.cfg.AfterFailing:
		s.reason = fmt.Sprintf("no delivery has succeeded since %s", s.failingSince.UTC().Format(time.RFC3339))
	default:
		return false
	}
	s.pausedSince = now
	s.nextProbe = now.Add(b.cfg.ProbeEvery)
	return true
}

// resume lifts a pause and forgets the failure streak.
func (b *breaker) resume(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.subs, id)
}

// pause reports the pause of id, or nil.
func (b *breaker) pause(id string) *health.Pause {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.subs[id]
	if !ok || s.pausedSince.IsZero() {
		return nil
	}
	since := s.pausedSince.UTC()
	return &health.Pause{Since: since, Reason: s.reason, NextProbe: s.nextProbe.UTC()}
}

// pausedIDs lists the paused subscriptions.
func (b *breaker) pausedIDs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ids []string
	for id, s := range b.subs {
		if !s.pausedSince.IsZero() {
			ids = append(ids, id)
		}
	}
	return ids
}
