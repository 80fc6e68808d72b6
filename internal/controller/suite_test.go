package controller

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/health"
	"github.com/involveo/webhook-operator/internal/relay"
	"github.com/involveo/webhook-operator/internal/relay/relaytest"
	"github.com/involveo/webhook-operator/internal/relayobjects"
	"github.com/involveo/webhook-operator/internal/routing"
	"github.com/involveo/webhook-operator/internal/testenv"
)

// Timeouts of the integration tests. The manager polls relay health every
// pollInterval and coalesces events for coalesceDelay, so every step the tests wait
// for takes a few of those; the bound leaves room for a loaded 2-core machine.
const (
	pollInterval  = 200 * time.Millisecond
	coalesceDelay = 50 * time.Millisecond
	settle        = 20 * time.Second
	quiet         = time.Second
)

var (
	testEnv    *envtest.Environment
	restConfig *rest.Config
	k8s        client.Client
	clientset  kubernetes.Interface
	scheme     = runtime.NewScheme()
	// logs captures every line the managers and relays of this package log, for the
	// test that looks for leaked secrets.
	logs = &logBuffer{}
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctrl.SetLogger(logs.logger("controller-runtime"))
	env, cfg, err := testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	testEnv = env
	// The tests create hundreds of objects at once; client-go's default 5 QPS would
	// measure its own rate limiter, not the manager.
	cfg.QPS, cfg.Burst = -1, 0
	restConfig = cfg
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, v1alpha1.AddToScheme} {
		if err := add(scheme); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if clientset, err = kubernetes.NewForConfig(cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// logBuffer collects log lines from several loggers.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) logger(name string) logr.Logger {
	return funcr.New(func(prefix, args string) {
		b.mu.Lock()
		defer b.mu.Unlock()
		fmt.Fprintf(&b.buf, "%s %s %s\n", name, prefix, args)
	}, funcr.Options{Verbosity: maxLogVerbosity})
}

// maxLogVerbosity is the most verbose the binaries log: --log-level=debug is V(4).
// Beyond it client-go dumps request bodies (V(8)), which hold the credentials Secret;
// the manager refuses such levels.
const maxLogVerbosity = 4

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// stack is a manager and an in-process relay serving one tenant namespace, as
// deployed: the relay reads the routing objects through the API server, and the
// manager polls the relay's health report.
type stack struct {
	operatorNS, tenantNS string
	relay                *relay.Relay
	ingest, admin        string

	// managerConfig and relayClient reach the API server as the manager and the
	// relay; cluster admin unless an option restricts them.
	managerConfig *rest.Config
	relayClient   kubernetes.Interface
	// relayWaitsForRBAC: the relay's permissions come from the Role the manager
	// creates, so its watch starts once that is bound.
	relayWaitsForRBAC bool

	managerCfg  Config
	stopManager func()
}

type stackOption func(t *testing.T, s *stack, c *Config)

func startStack(t *testing.T, opts ...stackOption) *stack {
	t.Helper()
	return startStackWithRelay(t, nil, opts...)
}

// startStackWithRelay is startStack with the relay's configuration adjusted.
func startStackWithRelay(t *testing.T, relayOpt func(*relay.Config), opts ...stackOption) *stack {
	t.Helper()
	s := &stack{operatorNS: createNamespace(t, "operator"), tenantNS: createNamespace(t, "tenant"),
		managerConfig: restConfig, relayClient: clientset}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	s.startRelay(t, ctx, &wg, relayOpt)
	cfg := Config{
		Namespace:          s.operatorNS,
		WatchNamespaces:    []string{s.tenantNS},
		Relay:              relayobjects.Config{Image: "example.com/webhook-operator:test", Replicas: 1},
		RelayHealthURL:     s.admin + health.Path,
		HealthPollInterval: pollInterval,
		CoalesceDelay:      coalesceDelay,
	}
	for _, o := range opts {
		o(t, s, &cfg)
	}
	s.startManager(t, cfg)
	s.startRoutingSource(t, ctx, &wg)
	return s
}

// startRelay runs the relay; it serves its admin port at once and takes events once
// the routing source has loaded a table.
func (s *stack) startRelay(t *testing.T, ctx context.Context, wg *sync.WaitGroup, opt func(*relay.Config)) {
	t.Helper()
	cfg := relaytest.Config(t.TempDir(), logs.logger("relay"))
	cfg.Workers = 8
	cfg.ShutdownTimeout = 2 * time.Second
	if opt != nil {
		opt(&cfg)
	}
	r := relay.New(cfg)
	wg.Go(func() {
		if err := r.Run(ctx); err != nil {
			t.Errorf("relay: %v", err)
		}
	})
	s.relay = r
	s.admin = "http://" + (<-r.AdminAddr()).String()
}

// startRoutingSource has the relay watch the routing objects, as cmd/relay does.
func (s *stack) startRoutingSource(t *testing.T, ctx context.Context, wg *sync.WaitGroup) {
	t.Helper()
	if s.relayWaitsForRBAC {
		NewWithT(t).Eventually(func() error {
			return k8s.Get(ctx, types.NamespacedName{Namespace: s.operatorNS, Name: relayobjects.Name}, &rbacv1.RoleBinding{})
		}).WithTimeout(settle).Should(Succeed())
	}
	src := &routing.KubernetesSource{Client: s.relayClient, Namespace: s.operatorNS, ConfigMapName: routing.ConfigMapName,
		SecretName: routing.CredentialsSecretName, Log: logs.logger("relay"), OnChange: s.relay.SetRoutes}
	wg.Go(func() {
		if err := src.Run(ctx); err != nil {
			t.Errorf("routing source: %v", err)
		}
	})
}

func (s *stack) startManager(t *testing.T, cfg Config) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(s.managerConfig, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  CacheOptions(cfg),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Logger:                 logs.logger("manager"),
		// Every test runs its own manager in this one process.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := Setup(ctx, mgr, cfg); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var once sync.Once
	s.stopManager = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("manager: %v", err)
			}
		})
	}
	t.Cleanup(s.stopManager)
	s.managerCfg = cfg
}

// restartManager stops the manager and starts a new one, as a rollout or a crash
// would; the relay keeps running.
func (s *stack) restartManager(t *testing.T) {
	t.Helper()
	s.stopManager()
	s.startManager(t, s.managerCfg)
}

// ingestURL waits for the relay to take events: it listens only once a routing
// table is loaded.
func (s *stack) ingestURL(t *testing.T) string {
	t.Helper()
	if s.ingest == "" {
		select {
		case a := <-s.relay.IngestAddr():
			s.ingest = "http://" + a.String()
		case <-time.After(settle):
			t.Fatal("the relay did not start taking events")
		}
	}
	return s.ingest
}

// post sends one of the seed document's events to the relay and expects it stored.
func (s *stack) post(t *testing.T, eventType string) []byte {
	t.Helper()
	body := seedEvent(t, eventType)
	resp, err := http.Post(s.ingestURL(t)+"/v1/events", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		answer, _ := io.ReadAll(resp.Body)
		t.Fatalf("ingest answered %d: %s", resp.StatusCode, answer)
	}
	return body
}

func seedEvent(t *testing.T, eventType string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "internal", "event", "testdata", eventType+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// routed reports whether the relay's loaded table has the subscription at generation.
func (s *stack) routed(id string, generation int64) bool {
	for _, sub := range s.relay.Health().Subscriptions {
		if sub.ID == id {
			return sub.Generation == generation
		}
	}
	return false
}

// table reads the routing table the manager wrote.
func (s *stack) table(g Gomega) *routing.Table {
	cm := &corev1.ConfigMap{}
	g.Expect(k8s.Get(context.Background(), types.NamespacedName{Namespace: s.operatorNS, Name: routing.ConfigMapName}, cm)).To(Succeed())
	table, err := routing.DecodeConfigMap(cm)
	g.Expect(err).NotTo(HaveOccurred())
	return table
}

func tableIDs(t *routing.Table) []string {
	ids := []string{}
	for _, s := range t.Subscriptions {
		ids = append(ids, s.ID)
	}
	return ids
}

func createNamespace(t testing.TB, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%s-%06d", prefix, strings.ToLower(strings.ReplaceAll(t.Name(), "_", "-"))[:min(30, len(t.Name()))], rand.IntN(1e6))
	name = strings.Trim(strings.ReplaceAll(name, "/", "-"), "-")
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return name
}

// endpoint is a subscriber: a real HTTP server on 127.0.0.1 answering with a status
// the test sets, recording every request.
type endpoint struct {
	*httptest.Server
	got    chan received
	mu     sync.Mutex
	status int
	// echo puts the request headers into the response body, as a careless receiver
	// might; the relay must not carry them into status or logs.
	echo bool
}

type received struct {
	header http.Header
	body   []byte
}

func newEndpoint(t *testing.T) *endpoint {
	e := &endpoint{got: make(chan received, 1000), status: http.StatusOK}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		e.got <- received{header: r.Header.Clone(), body: body}
		e.mu.Lock()
		status, echo := e.status, e.echo
		e.mu.Unlock()
		w.WriteHeader(status)
		if echo {
			_ = r.Header.Write(w)
		}
	}))
	t.Cleanup(e.Close)
	return e
}

func (e *endpoint) answer(status int) {
	e.mu.Lock()
	e.status = status
	e.mu.Unlock()
}

func (e *endpoint) next(t *testing.T) received {
	t.Helper()
	select {
	case r := <-e.got:
		return r
	case <-time.After(settle):
		t.Fatalf("no delivery to %s within %s", e.URL, settle)
		return received{}
	}
}

// none expects no delivery for a while.
func (e *endpoint) none(t *testing.T) {
	t.Helper()
	select {
	case r := <-e.got:
		t.Fatalf("unexpected delivery of %s to %s", r.header.Get("X-Involveo-Event"), e.URL)
	case <-time.After(quiet):
	}
}

func createSecret(t *testing.T, namespace, name string, data map[string]string) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, StringData: data}
	if err := k8s.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return s
}

// subscription builds a subscription of every task event to url whose API key is
// key "api-key" of secret.
func subscription(namespace, name, url, secret string, mutate ...func(*v1alpha1.WebhookSubscription)) *v1alpha1.WebhookSubscription {
	s := &v1alpha1.WebhookSubscription{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1alpha1.WebhookSubscriptionSpec{
			Endpoint:        v1alpha1.Endpoint{URL: url},
			Events:          []v1alpha1.EventPattern{"task.*"},
			APIKeySecretRef: v1alpha1.SecretKeyReference{Name: secret, Key: "api-key"},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

func create(t *testing.T, obj client.Object) {
	t.Helper()
	if err := k8s.Create(context.Background(), obj); err != nil {
		t.Fatal(err)
	}
}

func get(g Gomega, namespace, name string) *v1alpha1.WebhookSubscription {
	sub := &v1alpha1.WebhookSubscription{}
	g.Expect(k8s.Get(context.Background(), types.NamespacedName{Namespace: namespace, Name: name}, sub)).To(Succeed())
	return sub
}

// condition waits for a subscription's condition to have status and reason at the
// subscription's current generation, and returns the subscription.
func condition(t *testing.T, namespace, name, kind string, status metav1.ConditionStatus, reason string) *v1alpha1.WebhookSubscription {
	t.Helper()
	var sub *v1alpha1.WebhookSubscription
	NewWithT(t).Eventually(func(g Gomega) {
		sub = get(g, namespace, name)
		g.Expect(sub.Status.ObservedGeneration).To(Equal(sub.Generation))
		c := meta.FindStatusCondition(sub.Status.Conditions, kind)
		g.Expect(c).NotTo(BeNil(), "condition %s", kind)
		g.Expect(c.Status).To(Equal(status), "%s: %s", c.Reason, c.Message)
		g.Expect(c.Reason).To(Equal(reason), c.Message)
		g.Expect(c.ObservedGeneration).To(Equal(sub.Generation))
	}).WithTimeout(settle).WithPolling(50 * time.Millisecond).Should(Succeed())
	return sub
}

// events lists the Events recorded on a subscription.
func events(g Gomega, namespace, name string) []eventsv1.Event {
	var list eventsv1.EventList
	g.Expect(k8s.List(context.Background(), &list, client.InNamespace(namespace))).To(Succeed())
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			out = append(out, e)
		}
	}
	return out
}

func hasEvent(kind, reason string, contains ...string) func([]eventsv1.Event) bool {
	return func(list []eventsv1.Event) bool {
		for _, e := range list {
			if e.Type != kind || e.Reason != reason {
				continue
			}
			ok := true
			for _, c := range contains {
				ok = ok && strings.Contains(e.Note, c)
			}
			if ok {
				return true
			}
		}
		return false
	}
}
