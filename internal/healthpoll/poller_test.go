package healthpoll

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"

	"github.com/involveo/webhook-operator/internal/health"
)

// fakeRelay serves a report the test can change.
type fakeRelay struct {
	*httptest.Server
	mu     sync.Mutex
	report health.Report
	status int
}

func newFakeRelay(t *testing.T, r health.Report) *fakeRelay {
	f := &fakeRelay{report: r, status: http.StatusOK}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		w.WriteHeader(f.status)
		_ = json.NewEncoder(w).Encode(f.report)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeRelay) set(r health.Report, status int) {
	f.mu.Lock()
	f.report, f.status = r, status
	f.mu.Unlock()
}

func newPoller(urls ...string) (*Poller, *atomic.Int32) {
	var changes atomic.Int32
	return &Poller{
		Interval: time.Hour,
		Targets:  func(context.Context) ([]string, error) { return urls, nil },
		Source:   "test",
		OnChange: func() { changes.Add(1) },
		Client:   http.DefaultClient,
		Log:      logr.Discard(),
	}, &changes
}

func TestPoller_ReportsLoadedGenerationsAcrossReplicas(t *testing.T) {
	g := NewWithT(t)
	sub := func(gen int64) []health.Subscription { return []health.Subscription{{ID: "ns/a", Generation: gen}} }
	r1 := newFakeRelay(t, health.Report{Instance: "i1", Loaded: true, Revision: "r2", Subscriptions: sub(2)})
	r2 := newFakeRelay(t, health.Report{Instance: "i2", Loaded: true, Revision: "r1", Subscriptions: sub(1)})
	p, _ := newPoller(r1.URL, r2.URL)

	p.Poll(context.Background())
	v := p.View()
	g.Expect(v.Replicas).To(Equal(2))
	have, of := v.Loaded("ns/a", 2)
	g.Expect([]int{have, of}).To(Equal([]int{1, 2}))
	g.Expect(v.RevisionLoaded("r2")).To(BeFalse())
	g.Expect(v.Revisions()).To(Equal([]string{"r1", "r2"}))

	r2.set(health.Report{Instance: "i2", Loaded: true, Revision: "r2", Subscriptions: sub(2)}, http.StatusOK)
	p.Poll(context.Background())
	have, of = p.View().Loaded("ns/a", 2)
	g.Expect([]int{have, of}).To(Equal([]int{2, 2}))
	g.Expect(p.View().RevisionLoaded("r2")).To(BeTrue())
}

func TestPoller_CallsOnChangeOnlyWhenTheOutcomeChanges(t *testing.T) {
	g := NewWithT(t)
	relay := newFakeRelay(t, health.Report{Instance: "i1", Loaded: true, Revision: "r1"})
	p, changes := newPoller(relay.URL)

	p.Poll(context.Background())
	p.Poll(context.Background())
	g.Expect(changes.Load()).To(Equal(int32(1)), "the first poll is a change, an identical second one is not")

	relay.set(health.Report{Instance: "i1", Loaded: true, Revision: "r2"}, http.StatusOK)
	p.Poll(context.Background())
	g.Expect(changes.Load()).To(Equal(int32(2)))
}

func TestPoller_KeepsALastReportForAFewRoundsThenReportsUnavailable(t *testing.T) {
	g := NewWithT(t)
	relay := newFakeRelay(t, health.Report{Instance: "i1", Loaded: true, Revision: "r1"})
	p, _ := newPoller(relay.URL)
	p.Interval = 50 * time.Millisecond

	p.Poll(context.Background())
	relay.set(health.Report{}, http.StatusServiceUnavailable)
	p.Poll(context.Background())
	g.Expect(p.View().Replicas).To(Equal(1), "one failed poll keeps the last report")

	time.Sleep(freshRounds*p.Interval + 20*time.Millisecond)
	p.Poll(context.Background())
	v := p.View()
	g.Expect(v.Replicas).To(BeZero())
	g.Expect(v.Unavailable).To(ContainSubstring("HTTP 503"))
	g.Expect(v.RevisionLoaded("r1")).To(BeTrue(), "with no relay reading the objects nothing waits for a revision")
}

func TestPoller_SeedsFromStatusBeforeTheFirstPoll(t *testing.T) {
	g := NewWithT(t)
	relay := newFakeRelay(t, health.Report{Instance: "i1", Loaded: true})
	p, _ := newPoller(relay.URL)
	p.Seed = func(context.Context) (map[string]Seed, error) {
		return map[string]Seed{"ns/a": {UID: "u1"}}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Start(ctx) }()
	g.Eventually(func() bool { return p.View().Polled }).Should(BeTrue())
	cancel()
	g.Expect(<-done).To(Succeed())
	_, ok := p.Delivery("ns/a", "u1")
	g.Expect(ok).To(BeTrue())
}
