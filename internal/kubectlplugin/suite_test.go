package kubectlplugin

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	v1alpha1 "github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/relay"
	"github.com/involveo/webhook-operator/internal/relay/relaytest"
	"github.com/involveo/webhook-operator/internal/routing"
	"github.com/involveo/webhook-operator/internal/testenv"
)

// Timeouts of the tests. Deliveries to a local endpoint take milliseconds and
// the shortest retry interval the routing table allows is 1s, so every wait
// is a few seconds; the bound leaves room for a loaded 2-core machine.
const settle = 20 * time.Second

var (
	testEnv *envtest.Environment
	k8s     client.Client
	// adminKubeconfig is a kubeconfig of a cluster admin, the plugin's
	// default identity in these tests.
	adminKubeconfig string
	kubeconfigDir   string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	env, cfg, err := testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	testEnv = env
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if kubeconfigDir, err = os.MkdirTemp("", "kubectl-involveo-test-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(kubeconfigDir)
	if adminKubeconfig, err = userKubeconfig(envtest.User{Name: "plugin-admin", Groups: []string{"system:masters"}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// userKubeconfig writes a kubeconfig for a user of the test API server; the
// user's rights are whatever RBAC objects the test creates.
func userKubeconfig(u envtest.User) (string, error) {
	user, err := testEnv.AddUser(u, nil)
	if err != nil {
		return "", fmt.Errorf("add user %s: %w", u.Name, err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		return "", fmt.Errorf("render kubeconfig of %s: %w", u.Name, err)
	}
	path := filepath.Join(kubeconfigDir, u.Name+".kubeconfig")
	return path, os.WriteFile(path, data, 0o600)
}

// plugin runs kubectl-involveo commands in-process, as a user would from a
// shell, with a kubeconfig and a clock.
type plugin struct {
	kubeconfig string
	now        func() time.Time
}

func asAdmin() plugin { return plugin{kubeconfig: adminKubeconfig, now: time.Now} }

// run executes one command line and returns what it wrote.
func (p plugin) run(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newCommand(Streams{Out: &out, ErrOut: &errOut}, p.now)
	cmd.SetArgs(append([]string{"--kubeconfig", p.kubeconfig}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 2*settle)
	defer cancel()
	err = cmd.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// mustRun is run for commands that must succeed.
func (p plugin) mustRun(t testing.TB, args ...string) (stdout, stderr string) {
	t.Helper()
	stdout, stderr, err := p.run(t, args...)
	if err != nil {
		t.Fatalf("kubectl involveo %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr)
	}
	return stdout, stderr
}

// cellSeparator splits a table row into cells: kubectl's printers pad
// columns with at least three spaces, and no cell holds two in a row.
var cellSeparator = regexp.MustCompile(` {2,}`)

// rows parses a printed table into its header and rows of cells.
func rows(table string) (header []string, body [][]string) {
	for i, line := range strings.Split(strings.TrimRight(table, "\n"), "\n") {
		cells := cellSeparator.Split(strings.TrimSpace(line), -1)
		if i == 0 {
			header = cells
			continue
		}
		body = append(body, cells)
	}
	return header, body
}

// newNamespace creates a namespace of its own for one test.
func newNamespace(t testing.TB) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "plugin-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return ns.Name
}

// newSubscription creates a WebhookSubscription; the Secret it names need not
// exist, since no manager runs in these tests.
func newSubscription(t testing.TB, ns, name, url string) *v1alpha1.WebhookSubscription {
	t.Helper()
	sub := &v1alpha1.WebhookSubscription{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.WebhookSubscriptionSpec{
			Endpoint:        v1alpha1.Endpoint{URL: url},
			Events:          []v1alpha1.EventPattern{"task.*"},
			APIKeySecretRef: v1alpha1.SecretKeyReference{Name: name + "-hook", Key: "api-key"},
		},
	}
	if err := k8s.Create(context.Background(), sub); err != nil {
		t.Fatalf("create webhooksubscription %s/%s: %v", ns, name, err)
	}
	return sub
}

// endpoint is a subscriber: a real HTTP server on 127.0.0.1 answering with a
// status the test sets, recording every delivery.
type endpoint struct {
	*httptest.Server
	status atomic.Int32
	got    chan delivered
}

type delivered struct {
	header http.Header
	body   []byte
}

func newEndpoint(t testing.TB, status int) *endpoint {
	e := &endpoint{got: make(chan delivered, 1000)}
	e.status.Store(int32(status))
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		e.got <- delivered{header: r.Header.Clone(), body: body}
		w.WriteHeader(int(e.status.Load()))
	}))
	t.Cleanup(e.Close)
	return e
}

func (e *endpoint) next(t testing.TB) delivered {
	t.Helper()
	select {
	case d := <-e.got:
		return d
	case <-time.After(settle):
		t.Fatalf("no delivery to %s within %s", e.URL, settle)
		return delivered{}
	}
}

// testRelay is a relay running in-process on an embedded JetStream in a
// temporary folder, allowed to deliver to loopback endpoints.
type testRelay struct {
	ingest string
	admin  string
}

// route is one subscription of a relay's routing table.
func route(id, url, extra string) string {
	return fmt.Sprintf("  - id: %s\n    url: %s\n    events: [\"*\"]\n    apiKey: {value: key}\n%s", id, url, extra)
}

// noRetries dead-letters a delivery after its first failed attempt.
const noRetries = "    retry: {maxRetries: 0, interval: 1s}\n"

func startRelay(t testing.TB, adminListen string, routes ...string) *testRelay {
	t.Helper()
	table, err := routing.Parse([]byte("subscriptions:\n" + strings.Join(routes, "")))
	if err != nil {
		t.Fatalf("parse routing table: %v", err)
	}
	compiled, err := routing.Compile(table, nil)
	if err != nil {
		t.Fatalf("compile routing table: %v", err)
	}
	log := logr.Discard()
	if testing.Verbose() {
		log = testr.New(t.(*testing.T))
	}
	cfg := relaytest.Config(t.TempDir(), log)
	cfg.AdminListen = adminListen
	r := relay.New(cfg)
	r.SetRoutes(compiled)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	tr := &testRelay{}
	for _, addr := range []struct {
		ch  <-chan net.Addr
		url *string
	}{{r.AdminAddr(), &tr.admin}, {r.IngestAddr(), &tr.ingest}} {
		select {
		case a := <-addr.ch:
			*addr.url = "http://" + a.String()
		case err := <-done:
			t.Fatalf("relay stopped: %v", err)
		}
	}
	return tr
}

// post sends one of the seed document's example events to the relay.
func (tr *testRelay) post(t testing.TB, eventType string) {
	t.Helper()
	body, err := os.ReadFile(filepath.Join("..", "event", "testdata", eventType+".json"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(tr.ingest+"/v1/events", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("post event: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		answer, _ := io.ReadAll(resp.Body)
		t.Fatalf("ingest answered %d: %s", resp.StatusCode, answer)
	}
}

// eventuallyRows runs a listing command until its table has n rows.
func eventuallyRows(t *testing.T, p plugin, n int, args ...string) [][]string {
	t.Helper()
	var body [][]string
	NewWithT(t).Eventually(func(g Gomega) {
		stdout, _, err := p.run(t, args...)
		g.Expect(err).NotTo(HaveOccurred())
		_, body = rows(stdout)
		g.Expect(body).To(HaveLen(n))
	}, settle, 100*time.Millisecond).Should(Succeed(), "kubectl involveo %s", strings.Join(args, " "))
	return body
}
