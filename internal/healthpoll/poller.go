// Package healthpoll polls the relays' delivery-health reports (GET /v1/subscriptions),
// sums them over replicas into running totals that survive relay restarts, and tells the
// manager when something changed.
package healthpoll

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/types"

	"github.com/involveo/webhook-operator/internal/health"
)

const (
	// maxReportBytes bounds one report: 10,000 subscriptions take a few MiB.
	maxReportBytes = 64 << 20
	// freshRounds is how many poll intervals a relay's last report stays in force, so
	// that one missed poll does not flip every subscription to RelayUnavailable.
	freshRounds = 3
	// maxFetchTimeout bounds one fetch when the interval is long.
	maxFetchTimeout = 10 * time.Second
	// fetchConcurrency bounds the replicas polled at once.
	fetchConcurrency = 8
)

// Poller polls the relays every Interval. It is a manager.Runnable and needs leader
// election (the default), like the status writes its figures feed.
type Poller struct {
	// Interval is the time between polls.
	Interval time.Duration
	// Targets returns the report URLs to poll: one fixed URL, or one per relay pod.
	Targets func(ctx context.Context) ([]string, error)
	// Source describes the targets in messages ("http://…" or "the relay pods of …").
	Source string
	// Seed returns the subscriptions' status at start, by id.
	Seed func(ctx context.Context) (map[string]Seed, error)
	// OnChange is called after a poll whose outcome differs from the previous one.
	OnChange func()
	// Client fetches the reports.
	Client *http.Client
	Log    logr.Logger

	mu      sync.Mutex
	acc     *accumulator
	reports map[string]fetched // by instance
	view    *View
	digest  [sha256.Size]byte
}

type fetched struct {
	report health.Report
	at     time.Time
	digest [sha256.Size]byte
}

// View is what the last poll found. It is immutable.
type View struct {
	// Polled is false until the first poll has finished.
	Polled bool
	// Replicas is the number of relays whose report is fresh.
	Replicas int
	// Unavailable says why no relay counts, when Replicas is 0.
	Unavailable string

	reports []health.Report
	// loaded maps subscription id → generation → replicas that loaded it.
	loaded map[string]map[int64]int
	// paused maps subscription id → its pause on some replica.
	paused map[string]*health.Pause
}

// Loaded returns how many of the fresh relays have loaded generation of the
// subscription id, and of how many.
func (v *View) Loaded(id string, generation int64) (have, of int) {
	return v.loaded[id][generation], v.Replicas
}

// Paused returns the pause of the subscription id on any fresh relay, or nil.
// Each replica keeps its own breaker; one paused replica holds part of the
// endpoint's deliveries, which is worth saying.
func (v *View) Paused(id string) *health.Pause { return v.paused[id] }

// Revisions returns the routing revisions the fresh relays have loaded, sorted, each
// once; "" stands for a relay without a table.
func (v *View) Revisions() []string {
	var revs []string
	for _, r := range v.reports {
		rev := ""
		if r.Loaded {
			rev = r.Revision
		}
		revs = append(revs, rev)
	}
	slices.Sort(revs)
	return slices.Compact(revs)
}

// RevisionLoaded reports whether every fresh relay has loaded revision. With no relay
// answering it is true: no relay is reading the routing objects then.
func (v *View) RevisionLoaded(revision string) bool {
	for _, r := range v.reports {
		if !r.Loaded || r.Revision != revision {
			return false
		}
	}
	return true
}

// RelayURLs returns the base URLs of the relays' admin APIs (the report
// targets without the report path), for requests to every relay.
func (p *Poller) RelayURLs(ctx context.Context) ([]string, error) {
	targets, err := p.Targets(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(targets))
	for i, t := range targets {
		out[i] = strings.TrimSuffix(t, health.Path)
	}
	return out, nil
}

// View returns the outcome of the last poll.
func (p *Poller) View() *View {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.view == nil {
		return &View{}
	}
	return p.view
}

// Delivery returns the delivery figures of the subscription id with uid, and false when
// no relay has reported it and its status had none at start.
func (p *Poller) Delivery(id string, uid types.UID) (Delivery, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accumulator().delivery(id, uid)
}

// Retain forgets the figures of subscriptions not in ids: they were deleted.
func (p *Poller) Retain(ids map[string]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.accumulator().retain(ids)
}

func (p *Poller) accumulator() *accumulator {
	if p.acc == nil {
		p.acc = newAccumulator()
	}
	return p.acc
}

// Start seeds the totals from the subscriptions' status, then polls until ctx is done.
func (p *Poller) Start(ctx context.Context) error {
	if p.Seed != nil {
		seeds, err := p.Seed(ctx)
		if err != nil {
			return fmt.Errorf("seed delivery figures from status: %w", err)
		}
		p.mu.Lock()
		p.accumulator().seed(seeds)
		p.mu.Unlock()
	}
	ticker := time.NewTicker(p.Interval)
	defer ticker.Stop()
	for {
		p.Poll(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// Poll polls every target once and updates the view and the totals.
func (p *Poller) Poll(ctx context.Context) {
	now := time.Now()
	got, fetchErr := p.fetchAll(ctx)

	p.mu.Lock()
	if p.reports == nil {
		p.reports = map[string]fetched{}
	}
	for _, f := range got {
		f.at = now
		p.reports[f.report.Instance] = f
	}
	var fresh []fetched
	for instance, f := range p.reports {
		if now.Sub(f.at) > freshRounds*p.Interval {
			delete(p.reports, instance)
			continue
		}
		fresh = append(fresh, f)
	}
	slices.SortFunc(fresh, func(a, b fetched) int { return strings.Compare(a.report.Instance, b.report.Instance) })
	reports := make([]health.Report, len(fresh))
	for i, f := range fresh {
		reports[i] = f.report
	}
	p.accumulator().observe(reports, now)
	view := newView(reports, p.unavailable(fetchErr))
	digest := viewDigest(fresh, view)
	wasAvailable := p.view != nil && p.view.Replicas > 0
	changed := p.view == nil || digest != p.digest
	p.view, p.digest = view, digest
	p.mu.Unlock()

	switch {
	case view.Replicas == 0 && (wasAvailable || changed):
		p.Log.Info("no relay answered the health poll", "source", p.Source, "reason", view.Unavailable)
	case view.Replicas > 0 && !wasAvailable:
		p.Log.Info("relay health available", "source", p.Source, "replicas", view.Replicas)
	}
	if changed && p.OnChange != nil {
		p.OnChange()
	}
}

func (p *Poller) unavailable(fetchErr error) string {
	if fetchErr != nil {
		return fetchErr.Error()
	}
	return "no relay pod found"
}

func newView(reports []health.Report, unavailable string) *View {
	v := &View{Polled: true, Replicas: len(reports), reports: reports, loaded: map[string]map[int64]int{},
		paused: map[string]*health.Pause{}}
	if v.Replicas == 0 {
		v.Unavailable = unavailable
	}
	for _, r := range reports {
		if !r.Loaded {
			continue
		}
		for _, s := range r.Subscriptions {
			if s.Paused != nil {
				v.paused[s.ID] = s.Paused
			}
			if v.loaded[s.ID] == nil {
				v.loaded[s.ID] = map[int64]int{}
			}
			v.loaded[s.ID][s.Generation]++
		}
	}
	return v
}

// viewDigest changes whenever a report's content or the set of relays changes.
func viewDigest(fresh []fetched, v *View) [sha256.Size]byte {
	h := sha256.New()
	for _, f := range fresh {
		h.Write(f.digest[:])
	}
	h.Write([]byte(v.Unavailable))
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// fetchAll fetches every target. It returns the reports that arrived, and when none did,
// why.
func (p *Poller) fetchAll(ctx context.Context) ([]fetched, error) {
	targets, err := p.Targets(ctx)
	if err != nil {
		return nil, fmt.Errorf("find relays: %w", err)
	}
	results := make([]fetched, len(targets))
	errs := make([]error, len(targets))
	g := errgroup.Group{}
	g.SetLimit(fetchConcurrency)
	for i, url := range targets {
		g.Go(func() error {
			results[i], errs[i] = p.fetch(ctx, url)
			return nil
		})
	}
	_ = g.Wait()
	var got []fetched
	for i := range targets {
		if errs[i] == nil {
			got = append(got, results[i])
		}
	}
	if len(got) == 0 {
		return nil, errors.Join(errs...)
	}
	return got, nil
}

func (p *Poller) fetch(ctx context.Context, url string) (fetched, error) {
	ctx, cancel := context.WithTimeout(ctx, min(p.Interval, maxFetchTimeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fetched{}, fmt.Errorf("poll %s: %w", url, err)
	}
	resp, err := p.Client.Do(req)
	if err != nil {
		return fetched{}, fmt.Errorf("poll %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fetched{}, fmt.Errorf("poll %s: HTTP %d", url, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReportBytes+1))
	if err != nil {
		return fetched{}, fmt.Errorf("poll %s: %w", url, err)
	}
	if len(body) > maxReportBytes {
		return fetched{}, fmt.Errorf("poll %s: report larger than %d bytes", url, maxReportBytes)
	}
	var rep health.Report
	if err := json.Unmarshal(body, &rep); err != nil {
		return fetched{}, fmt.Errorf("poll %s: decode report: %w", url, err)
	}
	if rep.Instance == "" {
		return fetched{}, fmt.Errorf("poll %s: report without an instance id", url)
	}
	return fetched{report: rep, digest: sha256.Sum256(body)}, nil
}
