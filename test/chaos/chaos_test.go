// Package chaos holds the failure tests of the relay on an external JetStream
// cluster: a 3-node cluster started in-process, two relay processes built from
// cmd/relay, a real sink on 127.0.0.1 and a steady producer. Each test breaks
// one thing under load and checks that every event the relay acknowledged
// (202) reaches the sink at least once, or the dead-letter stream when the
// sink itself refused it. Duplicates are allowed (at-least-once) and counted.
package chaos

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/involveo/webhook-operator/internal/health"
	"github.com/involveo/webhook-operator/internal/natstest"
)

const (
	// produceInterval paces the producer at about 40 events/s: load enough
	// that a failure lands on work in flight, light enough for two CPUs that
	// also run three NATS servers and two relays.
	produceInterval = 25 * time.Millisecond
	// sinkLatency is how long the sink takes to answer: with it, each relay
	// has a few attempts running when a failure lands.
	sinkLatency = 150 * time.Millisecond
	// beforeFault is how long the producer runs before the failure.
	beforeFault = 3 * time.Second
	// afterFault is how long it keeps producing against the damaged system.
	afterFault = 5 * time.Second
	// resubmitWithin bounds the producer's resubmission of events the relay
	// refused (503) or never answered, after it stops producing new ones.
	resubmitWithin = 20 * time.Second
	// deliverAckWait is the relays' --deliver-ack-wait: the time after which
	// deliveries held by a dead relay are handed to the survivor.
	deliverAckWait = 10 * time.Second
	// fanoutAckWait is the relay's fixed AckWait of the fan-out consumer
	// (internal/relay/queue.go): events a dead relay was fanning out come back
	// after it.
	fanoutAckWait = 10 * time.Second
	// settleWithin bounds the wait for every acknowledged event to arrive: the
	// AckWaits plus a redelivery and attempt, with room for a loaded CI
	// machine.
	settleWithin = fanoutAckWait + deliverAckWait + 30*time.Second
	// globalAccount is the account of a NATS server without accounts.
	globalAccount = "$G"
)

var binDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// buildRelay compiles cmd/relay once per test binary.
var buildRelay = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "chaos-relay-bin-")
	if err != nil {
		return "", err
	}
	binDir = dir
	bin := filepath.Join(dir, "relay")
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/relay").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build cmd/relay: %v\n%s", err, out)
	}
	return bin, nil
})

func TestCluster_SIGKILLOfARelayLosesNoAcknowledgedEvent(t *testing.T) {
	rig := newRig(t, "")
	rig.produceFor(beforeFault)

	victim, survivor := rig.relays[0], rig.relays[1]
	fault := time.Now()
	victim.kill()
	rig.prod.setTargets(survivor.ingest)
	t.Logf("SIGKILLed %s", victim.name)

	rig.produceFor(afterFault)
	rig.finish(fault, nil)
}

func TestCluster_LossOfANATSNodeLosesNoAcknowledgedEvent(t *testing.T) {
	tests := []struct {
		name string
		// leads says whether the lost node leads the relay's streams and
		// consumers (every one of them) or none of them.
		leads bool
	}{
		{name: "a node that leads none of the relay's streams and consumers", leads: false},
		{name: "the node that leads every stream and consumer of the relay", leads: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rig := newRig(t, "")
			// The node most relays are connected to, so that they also
			// reconnect; leadership is placed so the case does not depend on
			// where elections happened to land.
			victim := 0
			for i, n := range rig.cluster.Nodes {
				if n.NumClients() > rig.cluster.Nodes[victim].NumClients() {
					victim = i
				}
			}
			rig.cluster.placeLeaders(t, victim, tt.leads)
			rig.produceFor(beforeFault)

			node := rig.cluster.Nodes[victim]
			t.Logf("shutting down %s: %s, %d client connections", node.Name(), rig.cluster.roles(victim), node.NumClients())
			fault := time.Now()
			node.Shutdown()

			rig.produceFor(afterFault)
			rig.finish(fault, nil)
		})
	}
}

func TestCluster_SinkOutageEndsDeliveredOrDeadLettered(t *testing.T) {
	// Two retries one second apart: an event refused for the first ~2s of
	// the outage is dead-lettered, a later one is delivered when it ends.
	// Pausing the endpoint after many dead letters is the breaker's job and
	// would hold deliveries past this test's budget, so it is off here.
	rig := newRig(t, "    retry: {maxRetries: 2, interval: 1s}\n", "--pause-after-dead-letters", "0")
	rig.produceFor(beforeFault)

	rig.sink.setStatus(http.StatusServiceUnavailable)
	fault := time.Now()
	rig.produceFor(afterFault)
	rig.sink.setStatus(http.StatusOK)
	t.Logf("sink answered 503 for %s", time.Since(fault).Round(time.Millisecond))

	deadLettered := map[string]bool{}
	rig.finish(fault, func() map[string]bool {
		for _, d := range rig.deadLetters() {
			deadLettered[d.EventID] = true
		}
		return deadLettered
	})
	if len(deadLettered) == 0 {
		t.Fatal("no delivery was dead-lettered: the outage did not outlast the retries")
	}
	t.Logf("dead letters: %d", len(deadLettered))
}

// rig is one test's world: the cluster, the sink, two relays and the
// producer.
type rig struct {
	t       *testing.T
	cluster *natsCluster
	sink    *sink
	relays  []*relayProcess
	prod    *producer
}

// newRig starts everything with one subscription to the sink; routeExtra is
// appended to its routing entry and relayArgs to both relays' flags.
func newRig(t *testing.T, routeExtra string, relayArgs ...string) *rig {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a NATS cluster and relay processes")
	}
	r := &rig{t: t, cluster: startCluster(t), sink: newSink(t)}
	routes := filepath.Join(t.TempDir(), "routes.yaml")
	table := fmt.Sprintf("subscriptions:\n  - id: chaos/sink\n    url: %s\n    events: [\"*\"]\n    apiKey: {value: k}\n    timeout: 5s\n%s",
		r.sink.URL, routeExtra)
	if err := os.WriteFile(routes, []byte(table), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--nats-url", r.cluster.ClientURLs(), "--nats-replicas", "3", "--config", routes,
		"--allow-destination-cidrs", "127.0.0.0/8", "--deliver-ack-wait", deliverAckWait.String()}, relayArgs...)
	// One after the other: both would declare the same streams at once.
	for i := range 2 {
		r.relays = append(r.relays, startRelay(t, fmt.Sprintf("relay-%d", i), args...))
	}
	r.prod = startProducer(t, r.relays[0].ingest, r.relays[1].ingest)
	return r
}

// produceFor lets the producer run for d. It is the test's clock, not a
// synchronisation: the producer runs on its own throughout.
func (r *rig) produceFor(d time.Duration) { time.Sleep(d) }

// finish stops the producer, resubmits what was refused, waits until every
// acknowledged event is delivered (or its id is in the set elsewhere returns)
// and reports.
func (r *rig) finish(fault time.Time, elsewhere func() map[string]bool) {
	t := r.t
	t.Helper()
	r.prod.stop(resubmitWithin)
	acked := r.prod.acknowledged()

	var missing []int
	deadline := time.Now().Add(settleWithin)
	for {
		missing = missing[:0]
		delivered := r.sink.delivered()
		var other map[string]bool
		if elsewhere != nil {
			other = elsewhere()
		}
		for n, a := range acked {
			if delivered[n] == 0 && !other[a.id] {
				missing = append(missing, n)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Duplicates come from deliveries a failure left unacknowledged, handed
	// out again after AckWait: count them once none is left. (An event the
	// fan-out hands out again publishes deliveries JetStream de-duplicates by
	// message id, so it adds none.)
	drained := len(missing) == 0 && r.cluster.waitDrained(t, time.Until(deadline))

	s := r.sink.summary(acked, fault)
	t.Logf("acknowledged %d, refused and resubmitted %d times, never acknowledged %d; delivered %d distinct, duplicates %d, lost %d",
		len(acked), r.prod.refusals(), len(r.prod.unacknowledged()), s.distinct, s.duplicates, len(missing))
	t.Logf("recovery: first delivery %s after the fault, longest pause in deliveries %s; "+
		"every event acknowledged before the fault delivered %s after it, every acknowledged event %s after it; "+
		"last delivery (duplicates included) %s after it",
		round(s.firstAfterFault), round(s.longestGap), round(s.priorSettled), round(s.allSettled), round(s.last))
	if len(missing) == 0 && !drained {
		t.Errorf("the queue still held work %s after production stopped; duplicates may be undercounted", settleWithin)
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		r.dumpLogs()
		t.Logf("queue: %s", r.cluster.queueState(t))
		t.Fatalf("%d acknowledged events lost (not delivered within %s): %v", len(missing), settleWithin, head(missing, 50))
	}
}

// deadLetters reads the subscription's dead letters from a live relay's
// admin API, every page.
func (r *rig) deadLetters() []health.DeadLetter {
	r.t.Helper()
	var all []health.DeadLetter
	after := ""
	for {
		var relay *relayProcess
		for _, p := range r.relays {
			if p.alive() {
				relay = p
				break
			}
		}
		url := "http://" + relay.admin + health.SubscriptionPath(health.DeadLettersPath, "chaos", "sink") + "?limit=500"
		if after != "" {
			url += "&after=" + after
		}
		resp, err := http.Get(url)
		if err != nil {
			r.t.Logf("read dead letters: %v", err)
			return all
		}
		var page health.Page[health.DeadLetter]
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			r.t.Logf("read dead letters: status %d, %v", resp.StatusCode, err)
			return all
		}
		all = append(all, page.Items...)
		if page.Next == "" {
			return all
		}
		after = page.Next
	}
}

func (r *rig) dumpLogs() {
	for _, p := range r.relays {
		r.t.Logf("--- last lines of %s's log:\n%s", p.name, p.logTail(40))
	}
}

func head(s []int, n int) []int { return s[:min(len(s), n)] }

func round(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

// natsCluster is a 3-node JetStream cluster in this process, listening on
// 127.0.0.1, with what these tests ask of the relay's streams on it.
type natsCluster struct {
	*natstest.Cluster
}

func startCluster(t *testing.T) *natsCluster {
	t.Helper()
	return &natsCluster{natstest.StartCluster(t, 3, t.TempDir())}
}

// queueState describes the consumers as the running nodes see them, for a
// failure message.
func (c *natsCluster) queueState(t *testing.T) string {
	js, closeConn, err := c.connect()
	if err != nil {
		return err.Error()
	}
	defer closeConn()
	var out []string
	for _, sc := range consumers {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		cons, err := js.Consumer(ctx, sc[0], sc[1])
		var info *jetstream.ConsumerInfo
		if err == nil {
			info, err = cons.Info(ctx)
		}
		cancel()
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", sc[1], err))
			continue
		}
		out = append(out, fmt.Sprintf("%s: leader %s, pending %d, unacknowledged %d, redelivered %d, waiting pulls %d",
			sc[1], info.Cluster.Leader, info.NumPending, info.NumAckPending, info.NumRedelivered, info.NumWaiting))
	}
	return strings.Join(out, "; ")
}

// connect opens a JetStream client on the running nodes.
func (c *natsCluster) connect() (jetstream.JetStream, func(), error) {
	nc, err := nats.Connect(c.ClientURLs())
	if err != nil {
		return nil, nil, fmt.Errorf("connect to inspect the queue: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("open JetStream to inspect the queue: %w", err)
	}
	return js, nc.Close, nil
}

// waitDrained waits until the deliver consumer has no message pending or
// unacknowledged, as seen from the nodes still running.
func (c *natsCluster) waitDrained(t *testing.T, within time.Duration) bool {
	t.Helper()
	js, closeConn, err := c.connect()
	if err != nil {
		t.Error(err)
		return false
	}
	defer closeConn()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		cons, err := js.Consumer(ctx, "INVOLVEO_DELIVERIES", "deliver")
		var info *jetstream.ConsumerInfo
		if err == nil {
			info, err = cons.Info(ctx)
		}
		cancel()
		if err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// consumers are the relay's two durable consumers, by stream.
var consumers = [][2]string{{"INVOLVEO_EVENTS", "fanout"}, {"INVOLVEO_DELIVERIES", "deliver"}}

// raftGroups are the relay's streams and consumers (consumer empty for a
// stream).
var raftGroups = [][2]string{
	{"INVOLVEO_EVENTS", ""}, {"INVOLVEO_DELIVERIES", ""}, {"INVOLVEO_DEADLETTERS", ""}, {"INVOLVEO_ATTEMPTS", ""},
	{"INVOLVEO_EVENTS", "fanout"}, {"INVOLVEO_DELIVERIES", "deliver"},
}

// placeLeaders moves the leadership of every relay stream and consumer onto
// node i (lead) or off it, with JetStream's leader step-down and a preferred
// successor.
func (c *natsCluster) placeLeaders(t *testing.T, i int, lead bool) {
	t.Helper()
	nc, err := nats.Connect(c.ClientURLs())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	other := c.Nodes[(i+1)%len(c.Nodes)].Name()
	for _, g := range raftGroups {
		isLeader := func() bool {
			if g[1] == "" {
				return c.Nodes[i].JetStreamIsStreamLeader(globalAccount, g[0])
			}
			return c.Nodes[i].JetStreamIsConsumerLeader(globalAccount, g[0], g[1])
		}
		if isLeader() == lead {
			continue
		}
		subject := "$JS.API.STREAM.LEADER.STEPDOWN." + g[0]
		if g[1] != "" {
			subject = "$JS.API.CONSUMER.LEADER.STEPDOWN." + g[0] + "." + g[1]
		}
		preferred := other
		if lead {
			preferred = c.Nodes[i].Name()
		}
		eventually(t, 20*time.Second, fmt.Sprintf("%s %s to lead %s", g[0], g[1], preferred), func() bool {
			if isLeader() == lead {
				return true
			}
			_, _ = nc.Request(subject, fmt.Appendf(nil, `{"placement":{"preferred":%q}}`, preferred), 2*time.Second)
			deadline := time.Now().Add(2 * time.Second)
			for isLeader() != lead && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			return isLeader() == lead
		})
	}
}

// roles names the Raft groups node i leads.
func (c *natsCluster) roles(i int) string {
	n := c.Nodes[i]
	var led []string
	if n.JetStreamIsLeader() {
		led = append(led, "meta")
	}
	for _, g := range raftGroups {
		switch {
		case g[1] == "" && n.JetStreamIsStreamLeader(globalAccount, g[0]):
			led = append(led, "stream "+g[0])
		case g[1] != "" && n.JetStreamIsConsumerLeader(globalAccount, g[0], g[1]):
			led = append(led, "consumer "+g[1])
		}
	}
	if len(led) == 0 {
		return "leads nothing"
	}
	return "leads " + strings.Join(led, ", ")
}

// relayProcess is cmd/relay running as a child process.
type relayProcess struct {
	name   string
	cmd    *exec.Cmd
	ingest string
	admin  string
	log    string
	exited chan struct{}
}

func startRelay(t *testing.T, name string, args ...string) *relayProcess {
	t.Helper()
	bin, err := buildRelay()
	if err != nil {
		t.Fatal(err)
	}
	p := &relayProcess{name: name, ingest: freeAddr(t), admin: freeAddr(t), exited: make(chan struct{}),
		log: filepath.Join(t.TempDir(), name+".log")}
	logFile, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, append([]string{"--listen", p.ingest, "--admin-listen", p.admin}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); _ = logFile.Close(); close(p.exited) }()
	t.Cleanup(p.kill)
	eventually(t, 60*time.Second, name+" ready", func() bool {
		if !p.alive() {
			t.Fatalf("%s exited during start-up:\n%s", name, p.logTail(20))
		}
		resp, err := http.Get("http://" + p.admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

func (p *relayProcess) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

func (p *relayProcess) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *relayProcess) logTail(n int) string {
	f, err := os.Open(p.log)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// sink is the subscriber: it answers status and records every event it
// accepted, by the producer's number.
type sink struct {
	*httptest.Server
	t      *testing.T
	status atomic.Int32
	mu     sync.Mutex
	count  map[int]int
	first  map[int]time.Time
	// times are the moments of every accepted delivery, in order.
	times []time.Time
}

func newSink(t *testing.T) *sink {
	s := &sink{t: t, count: map[int]int{}, first: map[int]time.Time{}}
	s.status.Store(http.StatusOK)
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *sink) serve(w http.ResponseWriter, r *http.Request) {
	var ev struct {
		Data struct {
			N *int `json:"n"`
		} `json:"data"`
	}
	body, err := io.ReadAll(r.Body)
	if err == nil {
		err = json.Unmarshal(body, &ev)
	}
	if err != nil || ev.Data.N == nil {
		s.t.Errorf("sink got a body that is not a producer event: %q (%v)", body, err)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	time.Sleep(sinkLatency)
	status := int(s.status.Load())
	if status == http.StatusOK {
		now := time.Now()
		s.mu.Lock()
		n := *ev.Data.N
		if s.count[n]++; s.count[n] == 1 {
			s.first[n] = now
		}
		s.times = append(s.times, now)
		s.mu.Unlock()
	}
	w.WriteHeader(status)
}

func (s *sink) setStatus(code int) { s.status.Store(int32(code)) }

func (s *sink) delivered() map[int]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[int]int, len(s.count))
	for n, c := range s.count {
		out[n] = c
	}
	return out
}

type sinkSummary struct {
	distinct, duplicates int
	// firstAfterFault is the first delivery after the fault; longestGap the
	// longest pause between deliveries from the fault until allSettled.
	firstAfterFault, longestGap time.Duration
	// priorSettled is when the last event acknowledged before the fault was
	// first delivered, after the fault: the work the failure held had moved.
	// allSettled is the same for every acknowledged event.
	priorSettled, allSettled time.Duration
	// last is the last delivery, after the fault.
	last time.Duration
}

func (s *sink) summary(acked map[int]ack, fault time.Time) sinkSummary {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sum sinkSummary
	for _, c := range s.count {
		sum.distinct++
		sum.duplicates += c - 1
	}
	for n, a := range acked {
		at, ok := s.first[n]
		if !ok {
			continue
		}
		if a.at.Before(fault) {
			sum.priorSettled = max(sum.priorSettled, at.Sub(fault))
		}
		sum.allSettled = max(sum.allSettled, at.Sub(fault))
	}
	settled := fault.Add(sum.allSettled)
	prev := fault
	for _, at := range s.times {
		if at.Before(fault) {
			continue
		}
		if sum.firstAfterFault == 0 {
			sum.firstAfterFault = at.Sub(fault)
		}
		if !at.After(settled) {
			sum.longestGap = max(sum.longestGap, at.Sub(prev))
		}
		prev = at
	}
	sum.last = prev.Sub(fault)
	return sum
}

// producer posts numbered events at a steady pace, alternating between
// targets. A refused event (503, an error, no answer) is resubmitted later
// with the same number and Idempotency-Key, as Involveo does.
type producer struct {
	t      *testing.T
	client *http.Client
	mu     sync.Mutex
	// targets are the ingest addresses events are posted to.
	targets  []string
	next     int
	retry    []int
	acked    map[int]ack
	refused  int
	stopLoop chan struct{}
	done     chan struct{}
}

func startProducer(t *testing.T, targets ...string) *producer {
	p := &producer{t: t, targets: targets, acked: map[int]ack{},
		client:   &http.Client{Timeout: 15 * time.Second},
		stopLoop: make(chan struct{}), done: make(chan struct{})}
	go p.loop()
	t.Cleanup(func() {
		select {
		case <-p.stopLoop:
		default:
			close(p.stopLoop)
		}
		<-p.done
	})
	return p
}

func (p *producer) setTargets(targets ...string) {
	p.mu.Lock()
	p.targets = targets
	p.mu.Unlock()
}

func (p *producer) loop() {
	defer close(p.done)
	tick := time.NewTicker(produceInterval)
	defer tick.Stop()
	for turn := 0; ; turn++ {
		select {
		case <-p.stopLoop:
			return
		case <-tick.C:
		}
		p.mu.Lock()
		n := p.next
		if len(p.retry) > 0 {
			n, p.retry = p.retry[0], p.retry[1:]
		} else {
			p.next++
		}
		target := p.targets[turn%len(p.targets)]
		p.mu.Unlock()
		p.submit(target, n)
	}
}

// submit posts event n once and files the outcome.
func (p *producer) submit(target string, n int) bool {
	body := fmt.Appendf(nil, `{"event":"chaos.tick","timestamp":"2025-07-28T13:15:40.507707+00:00Z","data":{"n":%d}}`, n)
	req, err := http.NewRequest(http.MethodPost, "http://"+target+"/v1/events", bytes.NewReader(body))
	if err != nil {
		p.t.Errorf("build request: %v", err)
		return false
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", "chaos-"+strconv.Itoa(n))
	resp, err := p.client.Do(req)
	var answer struct {
		ID string `json:"id"`
	}
	if err == nil {
		err = json.NewDecoder(resp.Body).Decode(&answer)
		resp.Body.Close()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err == nil && resp.StatusCode == http.StatusAccepted:
		p.acked[n] = ack{id: answer.ID, at: time.Now()}
		return true
	case err == nil && resp.StatusCode != http.StatusServiceUnavailable:
		p.t.Errorf("ingest answered %d to event %d", resp.StatusCode, n)
		return false
	}
	p.refused++
	p.retry = append(p.retry, n)
	return false
}

// stop ends production, then resubmits the refused events until each is
// acknowledged or within runs out.
func (p *producer) stop(within time.Duration) {
	close(p.stopLoop)
	<-p.done
	deadline := time.Now().Add(within)
	for turn := 0; time.Now().Before(deadline); turn++ {
		p.mu.Lock()
		if len(p.retry) == 0 {
			p.mu.Unlock()
			return
		}
		n := p.retry[0]
		p.retry = p.retry[1:]
		target := p.targets[turn%len(p.targets)]
		p.mu.Unlock()
		if !p.submit(target, n) {
			time.Sleep(produceInterval)
		}
	}
}

// ack is an event the relay acknowledged: its id and when.
type ack struct {
	id string
	at time.Time
}

func (p *producer) acknowledged() map[int]ack {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[int]ack, len(p.acked))
	for n, id := range p.acked {
		out[n] = id
	}
	return out
}

func (p *producer) unacknowledged() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.retry)
}

func (p *producer) refusals() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// eventually polls cond until it holds or the wait runs out.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
